"""Text from providers, modems and users shown on a terminal: never as terminal controls.

A message body may hold ESC sequences (recolour, retitle, move the cursor, or on some
terminals answer back), a carriage return that overwrites what was printed, or bidi controls
that reorder it. Every such character is shown as an escape instead, in a form that is valid
inside JSON too (`\\u001b`), so `--json` output stays parseable.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import TextIO, cast

# C0 controls, DEL, C1 controls (0x9b is CSI on 8-bit terminals), and the bidi controls
_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ONE_LINE = {c: _NAMED.get(c, f"\\u{c:04x}") for c in _CONTROLS}
# output as a whole keeps its own line breaks and tabs
_LINES = {c: escaped for c, escaped in _ONE_LINE.items() if c not in (0x09, 0x0A)}


def escape_controls(text: str) -> str:
    """One field on one line: every control character escaped, line breaks too."""
    return text.translate(_ONE_LINE)


class _ControlEscaping(io.TextIOBase):
    """A stream that passes text on with its control characters escaped, \\n and \\t kept."""

    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(text.translate(_LINES))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """Everything the CLI prints, errors and usage messages included, goes through here."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, _ControlEscaping(stdout))
    sys.stderr = cast(TextIO, _ControlEscaping(stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
