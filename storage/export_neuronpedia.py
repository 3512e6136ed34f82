"""Neuronpedia: request bodies for its feature batch upload (POST /api/feature/upload-batch).

Their route validates each body with a yup schema (apps/webapp/app/api/feature/upload-batch/route.tsx):
`modelId`, `source`, and 1-128 `features`, each with an integer `index`, an optional `density` in
[0, 1], optional `explanations` ({text: 1-512 characters, methodName, modelName}) and at least one
activation ({tokens: 1-1024 strings, values: as many numbers}). So `write` writes `batch-<n>.json` of
at most 128 features, residues as tokens (a window of 1,024 around the peak for longer proteins).

The schema has no score field; yup keeps keys it does not know, so each explanation carries our Pearson
r as `scoreV1` (the name of the score column of their Explanation table, which their dataset import
fills from records of that name) and each feature our label fields under `plmlabel`; the upload route
itself stores neither. `methodName`/`modelName` are left out: the route refuses names that are not
already registered types in their database. A feature none of whose examples fire has no activation to
upload; it is left out and listed in `skipped.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from storage.export import ExportExample, ExportFeature, ExportSae, label_fields
from storage.export_interprot import rounded

MAX_FEATURES = 128  # per request body
MAX_TOKENS = 1024  # per activation
MAX_TEXT = 512  # per explanation
SKIPPED_FILE = "skipped.json"


def model_id(sae: ExportSae) -> str:
    return (sae.plm_model or "unknown").lower()


def source_id(sae: ExportSae) -> str:
    """`<layer>-<set>` as Neuronpedia names sources, lower case."""
    name = re.sub(r"[^a-z0-9]+", "-", f"plmlabel-{sae.sae_id}".lower()).strip("-")
    return f"{sae.layer if sae.layer is not None else 0}-{name}"


def window(length: int, peak: int, size: int = MAX_TOKENS) -> tuple[int, int]:
    """[start, end) of at most `size` residues holding `peak`, centred on it where the protein allows."""
    if length <= size:
        return 0, length
    start = min(max(peak - size // 2, 0), length - size)
    return start, start + size


def activation(ex: ExportExample) -> dict[str, Any]:
    values = ex.activations
    peak = max(range(len(values)), key=values.__getitem__) if values else 0
    start, end = window(len(ex.sequence), peak)
    return {"tokens": list(ex.sequence[start:end]), "values": rounded(values[start:end])}


def explanation_text(feature: ExportFeature) -> str:
    record = feature.record
    text = (record.description or record.label or "").strip() or f"feature {record.feature}"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "\u2026"


def neuronpedia_feature(feature: ExportFeature) -> dict[str, Any] | None:
    """One feature of an upload body; None when no example fires (the upload needs an activation)."""
    examples = sorted((ex for ex in feature.examples if ex.max_activation > 0 and ex.all_residues),
                      key=lambda ex: (-ex.max_activation, ex.accession))
    if not examples:
        return None
    record = feature.record
    explanation: dict[str, Any] = {"text": explanation_text(feature)}
    if record.pearson is not None:
        explanation["scoreV1"] = round(record.pearson, 4)
    data: dict[str, Any] = {"index": record.feature, "explanations": [explanation],
                            "activations": [activation(ex) for ex in examples]}
    if feature.frac_proteins is not None:
        data["density"] = min(max(feature.frac_proteins, 0.0), 1.0)
    data["plmlabel"] = label_fields(feature)
    return data


def write(sae: ExportSae, features: Iterable[ExportFeature], folder: Path) -> list[str]:
    names: list[str] = []
    skipped: list[int] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        name = f"batch-{len(names)}.json"
        body = {"modelId": model_id(sae), "source": source_id(sae), "features": batch}
        (folder / name).write_text(json.dumps(body), encoding="utf-8")
        names.append(name)
        batch.clear()

    for feature in features:
        data = neuronpedia_feature(feature)
        if data is None:
            skipped.append(feature.record.feature)
            continue
        batch.append(data)
        if len(batch) == MAX_FEATURES:
            flush()
    if batch:
        flush()
    if skipped:
        (folder / SKIPPED_FILE).write_text(json.dumps({"no_firing_example": skipped}), encoding="utf-8")
        names.append(SKIPPED_FILE)
    return names
