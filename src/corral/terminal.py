"""Styled lines and boxed tables for `corral status` and `corral events`, without rich.

Scripts and monitors poll these commands, and importing rich's console costs more CPU than the rest of such a
command (docs/benchmarks.md). The output looks as rich draws it: the same box, bold headers, an italic title,
colours. Colour only when stdout is a terminal and `NO_COLOR` is unset (`FORCE_COLOR` forces it, as with rich);
a table too wide for the terminal is drawn as plain columns rather than cut; text from the instance never
reaches the terminal as a control sequence.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

CODES = {"bold": "1", "dim": "2", "italic": "3", "underline": "4", "red": "31", "green": "32", "yellow": "33",
         "blue": "34", "magenta": "35", "cyan": "36"}  # fmt: skip
Span = tuple[str, str]  # text and its style: space-separated names of CODES, "" for none
Cell = str | Span
# Control characters (escape sequences included) are shown as "?": a message may carry an app's exception text.
_CONTROLS = {**dict.fromkeys([*range(32), 127], "?"), ord("\n"): "\n", ord("\t"): " "}
_ONE_LINE = {**_CONTROLS, ord("\n"): " "}
# rich's HEAVY_HEAD box, rows: top, header, below the header, body, bottom; columns: left, fill, between, right.
HEAVY_HEAD = ("┏━┳┓", "┃ ┃┃", "┡━╇┩", "│ ││", "└─┴┘")
ASCII = ("+-++", "| ||", "|-+|", "| ||", "+-++")


def wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except ValueError:  # a closed stream
        return False


def terminal_width(stream: TextIO) -> int | None:
    """Columns of the terminal `stream` writes to (`COLUMNS` first); None when it is not a terminal."""
    try:
        if not stream.isatty():
            return None
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() and int(columns) > 0 else os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return None


def width(text: str) -> int:
    """Columns `text` takes on a terminal (East Asian wide characters take two)."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


class Terminal:
    """Where `corral status` and `corral events` print: stdout unless told otherwise."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None, columns: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = wants_colour(self.stream) if colour is None else colour
        self.columns = terminal_width(self.stream) if columns is None else columns
        try:
            "┏━┃│└".encode(self.stream.encoding or "ascii")
            self.box = HEAVY_HEAD
        except (UnicodeEncodeError, LookupError):
            self.box = ASCII

    def styled(self, text: str, style: str, one_line: bool = False) -> str:
        text = text.translate(_ONE_LINE if one_line else _CONTROLS)
        if not (self.colour and style and text):
            return text
        codes = ";".join(CODES[name] for name in style.split())
        return f"\x1b[{codes}m{text}\x1b[0m"

    def line(self, *spans: Cell) -> None:
        """Print one line (or several, for text with newlines) made of plain and styled parts."""
        parts = [(span, "") if isinstance(span, str) else span for span in spans]
        print("".join(self.styled(text, style) for text, style in parts), file=self.stream, flush=True)

    def table(self, title: str, columns: Sequence[tuple[str, bool]], rows: Sequence[Sequence[Cell]],
              caption: str = "") -> None:  # fmt: skip
        """`columns`: name and whether it is right-aligned. The title and the caption are centred on the table,
        as rich places them; a table wider than the terminal is printed as plain columns instead."""
        cells = [[(cell, "") if isinstance(cell, str) else cell for cell in row] for row in rows]
        cells = [[(text.translate(_ONE_LINE), style) for text, style in row] for row in cells]
        widths = [max([width(name), *(width(row[i][0]) for row in cells)]) for i, (name, _) in enumerate(columns)]
        boxed = sum(widths) + 3 * len(widths) + 1
        if self.columns is not None and boxed > self.columns:
            self._columns(title, columns, cells, widths, caption)
            return
        top, head, rule, body, bottom = self.box

        def row(texts: Sequence[Span], sides: str) -> str:
            drawn = [self.styled(_pad(text, size, right), style) for (text, style), size, (_, right)
                     in zip(texts, widths, columns, strict=True)]  # fmt: skip
            inner = f" {sides[2]} ".join(drawn)
            return f"{sides[0]} {inner} {sides[3]}"

        def border(sides: str) -> str:
            return sides[0] + sides[2].join(sides[1] * (size + 2) for size in widths) + sides[3]

        lines = [border(top), row([(name, "bold") for name, _ in columns], head), border(rule)]
        lines += [row(texts, body) for texts in cells] + [border(bottom)]
        if title:
            lines.insert(0, self.styled(_centre(title, boxed), "italic", one_line=True))
        if caption:
            lines.append(self.styled(_centre(caption, boxed), "dim italic", one_line=True))
        print("\n".join(lines), file=self.stream, flush=True)

    def _columns(self, title: str, columns: Sequence[tuple[str, bool]], cells: list[list[Span]],
                 widths: list[int], caption: str) -> None:  # fmt: skip
        """A narrow terminal: columns two spaces apart under a bold header, like `ps`, every value whole."""
        lines = [self.styled(title, "italic", one_line=True)] if title else []
        for texts in [[(name, "bold") for name, _ in columns], *cells]:
            drawn = [self.styled(_pad(text, size, right), style) for (text, style), size, (_, right)
                     in zip(texts, widths, columns, strict=True)]  # fmt: skip
            lines.append("  ".join(drawn).rstrip())
        if caption:
            lines.append(self.styled(caption, "dim italic", one_line=True))
        print("\n".join(lines), file=self.stream, flush=True)


def _pad(text: str, size: int, right: bool) -> str:
    gap = " " * (size - width(text))
    return gap + text if right else text + gap


def _centre(text: str, size: int) -> str:
    """`text` centred in `size` columns (no trailing spaces); a longer text is left as it is, never cut."""
    return " " * max(0, (size - width(text)) // 2) + text
