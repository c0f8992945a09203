"""Small wording helpers shared by the command line and the manager (no imports: the manager stays lean, and
`corral status` costs little CPU)."""

from __future__ import annotations


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 worker', '2 workers', '0 workers'; `words` for an irregular plural ('crash', 'crashes')."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


def format_bytes(size: int) -> str:
    """'512 KiB', '40 MiB', '1.5 GiB'."""
    if size >= 1024**3:
        return f"{size / 1024**3:.1f} GiB"
    if size >= 1024**2:
        return f"{size / 1024**2:.0f} MiB"
    return f"{size / 1024:.0f} KiB"
