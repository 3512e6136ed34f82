"""labels.jsonl: one label per line (PLM, SAE, layer, index, label, description, scores, provenance)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from storage.export import ExportFeature, ExportSae, label_fields

JSONL_FILE = "labels.jsonl"


def jsonl_line(sae: ExportSae, feature: ExportFeature) -> dict[str, Any]:
    return {
        "plm_model": sae.plm_model,
        "layer": sae.layer,
        "sae_id": sae.sae_id,
        "architecture": sae.architecture,
        "d_sae": sae.d_sae,
        **label_fields(feature),
    }


def write(sae: ExportSae, features: Iterable[ExportFeature], folder: Path) -> list[str]:
    with (folder / JSONL_FILE).open("w", encoding="utf-8") as out:
        for feature in features:
            out.write(json.dumps(jsonl_line(sae, feature), sort_keys=True) + "\n")
    return [JSONL_FILE]
