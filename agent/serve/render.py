"""The one adapter over the static viewer's rendering (storage/export_html.py).

serve shows a labeled feature exactly as `export --format html` does, so it calls the viewer's own
renderer and only re-points the page: its links go to serve's URLs, its Content-Security-Policy becomes
serve's, and serve's navigation and sections (suggestions, neighbours) go in. When the viewer's public
`render_feature_page` lands, only this file changes.
"""

from __future__ import annotations

import re

from storage import export_html
from storage.export import ExportBundle, ExportExample, ExportFeature, ExportSae

esc = export_html.esc
fmt = export_html._fmt

# No script at all, forms only to serve itself, nothing fetched from elsewhere.
SERVE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
             "base-uri 'none'; frame-ancestors 'none'")
_META_CSP = re.compile(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">')
_INDEX_LINK = '<a href="../index.html">← all features</a>'


def viewer_css() -> str:
    return export_html._asset("viewer.css")


def feature_page(sae: ExportSae, feature: ExportFeature, *, index_url: str, nav: str, extra: str,
                 css: str = "") -> str:
    """The static viewer's page of `feature`, with serve's CSP, links, `css`, `nav` (top) and `extra`
    (bottom). `nav` and `extra` are HTML that the caller built with `esc` on every value.
    """
    page = export_html.render_feature(ExportBundle(sae=sae, features=[feature], has_examples=True), feature)
    page = _META_CSP.sub(f'<meta http-equiv="Content-Security-Policy" content="{SERVE_CSP}">', page, count=1)
    page = page.replace(_INDEX_LINK, f'<a href="{esc(index_url)}">← search</a>', 1)
    page = page.replace("</style>", f"{css}</style>", 1)
    page = page.replace("<body>\n", f"<body>\n{nav}\n", 1)
    head, _, tail = page.rpartition("</body>")
    return f"{head}{extra}\n</body>{tail}"


def shaded_sequence(sequence: str, activations: list[float], scale: float) -> str:
    """A sequence with firing residues shaded by activation / `scale`, as the viewer's examples are."""
    example = ExportExample(accession="pasted", sequence=sequence, normalized=0.0, activations=activations,
                            max_activation=max(activations, default=0.0))
    return export_html._sequence_html(example, scale)
