"""Versioned prompt templates: plain text files in this package, loaded with importlib.resources.

A prompt file holds sections introduced by a line `=== <section> ===` (e.g. `system`, `user`);
placeholders are `$name` (string.Template; a literal dollar is `$$`). A prompt's version is the short
SHA-256 of its whole text, so any edit yields a new version and every stored label says which text
produced it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from string import Template

_SECTION = re.compile(r"^=== *([a-z_]+) *===[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    version: str
    sections: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def render(self, section: str, **values: object) -> str:
        """The section with its `$placeholders` filled; a missing value is a KeyError (a bug)."""
        try:
            template = self.sections[section]
        except KeyError:
            raise KeyError(f"prompt {self.name!r} has no section {section!r}") from None
        return Template(template).substitute({k: str(v) for k, v in values.items()})


def version_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def parse(name: str, text: str) -> Prompt:
    """Split a prompt text into its sections."""
    marks = list(_SECTION.finditer(text))
    sections: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        sections[mark.group(1)] = text[mark.end() : end].strip("\n")
    if not sections:
        sections["user"] = text.strip("\n")
    return Prompt(name=name, text=text, version=version_of(text), sections=sections)


@cache
def load(name: str) -> Prompt:
    """Load prompts/<name>.txt from the installed package."""
    text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return parse(name, text)


def available() -> list[str]:
    return sorted(
        p.name[: -len(".txt")] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt")
    )
