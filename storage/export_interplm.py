"""LLM_Autointerp.csv as InterPLM's dashboard reads it, for its cache's `layer_<L>/` folder.

The dashboard loads it with `pd.read_csv(...).set_index("Feature")`, titles a feature's summary
"score=<Correlation:.2f>", and its "random feature" button samples from `Correlation > 0.5` on its
own. Our `validated` is Pearson r >= the labeling threshold (default 0.5) on at least `min_heldout`
held-out proteins with enough spread in their activations, so a row with Correlation > 0.5 is
not always validated (too few held-out proteins) and `--validated-only` keeps exactly the validated
ones. A label that was never scored (no r) gets no row at all: a blank Correlation shows as
"score=nan".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from storage.csv_safe import table_line
from storage.export import INTERPLM_FILE, ExportFeature, ExportSae

HEADER = ("Feature", "Summary", "Correlation")


def interplm_row(feature: ExportFeature) -> list[object] | None:
    """Feature, Summary, Correlation; None for a label without a score (see the module docstring)."""
    record = feature.record
    if record.pearson is None:
        return None
    return [record.feature, record.description or record.label or "", round(record.pearson, 4)]


def write(sae: ExportSae, features: Iterable[ExportFeature], folder: Path) -> list[str]:
    """Rows go through storage/csv_safe.py (a cell a spreadsheet would run is neutralised)."""
    with (folder / INTERPLM_FILE).open("w", encoding="utf-8", newline="") as out:
        out.write(table_line(HEADER))
        for feature in features:
            row = interplm_row(feature)
            if row is not None:
                out.write(table_line(row))
    return [INTERPLM_FILE]
