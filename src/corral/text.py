"""Small wording helpers shared by the command line and the manager (no imports: the manager stays lean)."""

from __future__ import annotations


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 worker', '2 workers', '0 workers'; `words` for an irregular plural ('crash', 'crashes')."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"
