"""Stored text (Swiss-Prot, LLM output, user files) reaches the terminal as inert characters.

Two threats, one place that handles both:
    markup     rich would read `[bold]x[/bold]` or `[/x]` in data as markup (eaten, or a MarkupError):
               the consoles run with markup off, and `data_text` builds `Text` objects that are
               never parsed (use it for panel titles, which rich parses even on a markup-free console).
    controls   ESC (ANSI/OSC sequences: colours, a changed window title, hyperlinks), CR, BEL,
               other C0/C1 controls, DEL and bidi overrides would act on the terminal. `clean` shows
               each as a visible escape (`\\x1b`, `\\u202e`); newline and tab are kept.

`SafeConsole` applies `clean` to every string it turns into text and, as a last net, to every
segment it renders (rich's own styling is emitted apart from segment text, so it is untouched).
JSON output does not go through here: `json.dumps` keeps the exact text, escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls, and the bidi embeddings/overrides/isolates that
# reorder what a reader sees (Trojan Source).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object) -> str:
    """`value` as text with every terminal control character shown as a visible escape."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub(_visible, text)


def data_text(value: object, style: str = "") -> Text:
    """Data as a rich `Text`: never parsed as markup, controls made visible."""
    return Text(clean(value), style=style)


class SafeConsole(Console):
    """A rich Console whose output never carries a control character that came from data."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(clean(text), **kwargs)

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and _UNSAFE.search(segment.text):
                yield Segment(clean(segment.text), segment.style)
            else:
                yield segment
