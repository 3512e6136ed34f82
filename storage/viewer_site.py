"""Write the static viewer from a stream of features: each feature page is written as soon as the next
feature is known (for its 'next' link), and each index row goes to a spool file that becomes the
index page's data at the end, so memory does not grow with the number of features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from storage.export import ExportFeature, ExportSae
from storage.viewer_common import FEATURES_DIR, Links
from storage.viewer_index import index_page_parts, index_row, index_row_json
from storage.viewer_page import PageContext, render_feature_page

INDEX = "index.html"
_SPOOL = ".index-rows.spool"


def write_site(sae: ExportSae, features: Iterable[ExportFeature], folder: Path, *, has_examples: bool,
               on_page: Callable[[], None] | None = None) -> list[str]:
    """index.html and features/<n>.html in `folder` (features in id order); the relative paths written."""
    pages = folder / FEATURES_DIR
    pages.mkdir()
    links = Links.static_from_feature_page()
    files: list[str] = []
    n_features = n_validated = 0
    spool_path = folder / _SPOOL
    track_cache: dict = {}

    def flush(feature: ExportFeature, previous: int | None, following: int | None) -> None:
        context = PageContext(sae=sae, links=links, previous=previous, next=following,
                              has_examples=has_examples, track_cache=track_cache)
        name = f"{FEATURES_DIR}/{feature.record.feature}.html"
        (folder / name).write_text(render_feature_page(feature, context), encoding="utf-8")
        files.append(name)
        if on_page:
            on_page()

    with spool_path.open("w", encoding="utf-8") as spool:
        pending: ExportFeature | None = None
        previous: int | None = None
        for feature in features:
            spool.write(("," if n_features else "") + index_row_json(index_row(feature)))
            n_features += 1
            n_validated += bool(feature.record.validated)
            if pending is not None:
                flush(pending, previous, feature.record.feature)
                previous = pending.record.feature
            pending = feature
        if pending is not None:
            flush(pending, previous, None)
    before, after = index_page_parts(sae, n_features=n_features, n_validated=n_validated,
                                     has_examples=has_examples)
    with (folder / INDEX).open("w", encoding="utf-8") as out, spool_path.open(encoding="utf-8") as spool:
        out.write(before)
        while chunk := spool.read(1 << 20):
            out.write(chunk)
        out.write(after)
    spool_path.unlink()
    return [INDEX, *files]
