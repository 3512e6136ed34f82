"""The one adapter over the static viewer's rendering (storage/export_html.py and its modules).

serve shows a labeled feature exactly as `export --format html` does, so it calls the viewer's own
renderer and only re-points the page: its links go to serve's URLs, its Content-Security-Policy becomes
serve's, and serve's navigation and sections go in. Where the viewer's public `render_feature_page(feature,
context)` exists (storage/viewer_page.py) it is used, with serve's routes as the page's links, and it
draws the previous/next links and the suggestions itself (`VIEWER_PAGE`); otherwise the older
`render_feature` is used and serve adds those sections.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from storage import export_html
from storage.export import ExportBundle, ExportExample, ExportFeature, ExportSae

try:  # the viewer's public page renderer and its shared pieces, once they are there
    from storage.viewer_common import Links, asset, esc, fmt
    from storage.viewer_page import PageContext, render_feature_page
    from storage.viewer_tracks import sequence_tracks_html
except ImportError:  # pragma: no cover - depends on which viewer is installed
    render_feature_page = None
    esc = export_html.esc
    fmt = export_html._fmt
    asset = export_html._asset
VIEWER_PAGE = render_feature_page is not None  # True: the page has its own prev/next and suggestions

# No script at all, forms only to serve itself, nothing fetched from elsewhere.
SERVE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
             "base-uri 'none'; frame-ancestors 'none'")
_META_CSP = re.compile(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">')
_INDEX_LINK = '<a href="../index.html">← all features</a>'


def viewer_css() -> str:
    return asset("viewer.css")


def feature_page(sae: ExportSae, feature: ExportFeature, *, index_url: str, feature_url: Callable[[int], str],
                 previous: int | None, next: int | None, nav: str, extra: str, css: str = "") -> str:
    """The viewer's page of `feature`, with serve's CSP, links, `css`, `nav` (top) and `extra` (bottom).

    `nav` and `extra` are HTML that the caller built with `esc` on every value.
    """
    if render_feature_page is not None:
        context = PageContext(sae=sae, links=Links(feature=feature_url, index=index_url), previous=previous,
                              next=next, has_examples=True)
        page = render_feature_page(feature, context)
    else:
        bundle = ExportBundle(sae=sae, features=[feature], has_examples=True)
        page = export_html.render_feature(bundle, feature)
        page = page.replace(_INDEX_LINK, f'<a href="{esc(index_url)}">← search</a>', 1)
    page = _META_CSP.sub(f'<meta http-equiv="Content-Security-Policy" content="{SERVE_CSP}">', page, count=1)
    page = page.replace("</style>", f"{css}</style>", 1)
    page = page.replace("<body>\n", f"<body>\n{nav}\n", 1)
    head, _, tail = page.rpartition("</body>")
    return f"{head}{extra}\n</body>{tail}"


def shaded_sequence(sequence: str, activations: list[float], scale: float) -> str:
    """A sequence with firing residues shaded by activation / `scale`, as the viewer's examples are."""
    example = ExportExample(accession="pasted", sequence=sequence, normalized=0.0, activations=activations,
                            max_activation=max(activations, default=0.0))
    if hasattr(export_html, "_sequence_html"):
        return export_html._sequence_html(example, scale)
    return sequence_tracks_html(example, scale)
