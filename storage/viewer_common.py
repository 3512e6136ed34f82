"""What every viewer page shares: escaping, safe JSON in a script element, the page head, the CSP, and
the link builder that lets the static export and `plmlabel serve` render the same pages.

All stored text (labels, descriptions, Swiss-Prot text, traces, suggestions) is untrusted: it reaches
HTML only through `esc` (text and quoted attributes) or `json_for_script` (data read by a script that
writes with `textContent` only).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
FEATURES_DIR = "features"


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute; None becomes ''."""
    return "" if value is None else html.escape(str(value), quote=True)


def attr(value: str) -> str:
    """Escape for a double-quoted attribute, keeping single quotes readable (a CSP is full of them)."""
    return html.escape(value, quote=False).replace('"', "&quot;")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside a <script> element (cannot close it or start a comment)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for char, escaped in _JSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


@cache
def asset(name: str) -> str:
    return resources.files("storage.viewer").joinpath(name).read_text(encoding="utf-8")


def script_csp(script: str) -> str:
    """A CSP that runs exactly `script` (by hash) and loads nothing from anywhere."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"
    )


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def head(title: str, csp: str, css: str | None = None) -> str:
    css = asset("viewer.css") if css is None else css
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{attr(csp)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{css}</style>\n</head>\n"
    )


def uniprot_url(accession: str) -> str:
    return "https://www.uniprot.org/uniprotkb/" + quote(accession, safe="") + "/entry"


def alphafold_url(accession: str) -> str:
    return "https://alphafold.ebi.ac.uk/entry/" + quote(accession, safe="")


@dataclass(frozen=True)
class Links:
    """Where a page's links point. The static export uses relative files; `serve` passes its routes.

    feature(n) -> the URL of feature n's page; index -> the table of all features.
    """

    feature: Callable[[int], str]
    index: str

    @staticmethod
    def static_from_feature_page() -> Links:
        """Links as seen from `features/<n>.html` of the static export."""
        return Links(feature=lambda n: f"{int(n)}.html", index="../index.html")

    @staticmethod
    def static_from_index() -> Links:
        return Links(feature=lambda n: f"{FEATURES_DIR}/{int(n)}.html", index="index.html")


def sae_line(sae: Any) -> str:
    """'esm2_t6_8M_UR50D, layer 4, topk, 10240 features' from an ExportSae (plain text, unescaped)."""
    parts = [p for p in (sae.plm_model, f"layer {sae.layer}" if sae.layer is not None else None,
                         sae.architecture, f"{sae.d_sae} features" if sae.d_sae else None) if p]
    return ", ".join(parts)
