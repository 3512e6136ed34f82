"""The static HTML viewer: `index.html` (search, sort, filter, paging) and `features/<n>.html` per feature.

Self-contained: CSS and script are inlined, nothing is fetched, so it opens from disk or any static host.
All text that came from an LLM or from Swiss-Prot is untrusted: feature pages are rendered on this side
with `html.escape`; the index page's data is JSON inside `<script type="application/json">` with `<`,
`>`, `&` and U+2028/9 escaped, which the script writes with `textContent` only. A Content-Security-
Policy allows no script but the index's own (by hash) as a second line of defence.

The pieces live in storage/viewer_*.py (common, charts, tracks, trace, page, index, site); this module
keeps the entry points the export writer and older callers use.
"""

from __future__ import annotations

from pathlib import Path

from storage.export import ExportBundle, ExportFeature
from storage.viewer_common import FEATURES_DIR, PAGE_CSP, Links, esc, json_for_script
from storage.viewer_index import index_row, render_index_page
from storage.viewer_page import PageContext, render_feature_page
from storage.viewer_site import write_site


def index_data(bundle: ExportBundle) -> dict:
    """What the index page's script reads: one small record per feature (no sequences)."""
    return {"sae_id": bundle.sae.sae_id, "features": [index_row(f) for f in bundle.features]}


def render_index(bundle: ExportBundle) -> str:
    return render_index_page(bundle.sae, [index_row(f) for f in bundle.features],
                             has_examples=bundle.has_examples)


def render_feature(bundle: ExportBundle, feature: ExportFeature) -> str:
    """A feature page with its neighbours in `bundle` linked (the whole-bundle form of the writer)."""
    ids = [f.record.feature for f in bundle.features]
    at = ids.index(feature.record.feature) if feature.record.feature in ids else -1
    context = PageContext(
        sae=bundle.sae, links=Links.static_from_feature_page(),
        previous=ids[at - 1] if at > 0 else None,
        next=ids[at + 1] if 0 <= at < len(ids) - 1 else None, has_examples=bundle.has_examples,
    )
    return render_feature_page(feature, context)


def write_html(bundle: ExportBundle, folder: Path) -> list[str]:
    """Write index.html and features/<n>.html into `folder`; returns the relative paths.

    `bundle.features` may be any iterable of features in id order (agent/export_bundle.py passes a
    stream), so the pages are written as they are built.
    """
    return write_site(bundle.sae, bundle.features, folder, has_examples=bundle.has_examples)


__all__ = ["FEATURES_DIR", "PAGE_CSP", "esc", "index_data", "json_for_script", "render_feature",
           "render_feature_page", "render_index", "write_html"]
