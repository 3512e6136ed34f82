"""InterProt's viewer files: one `<feature>.json` per feature, and the `SAEConfigs.ts` entry.

Their viewer (viz/src/SAEVisualizerPage.tsx) fetches `<STORAGE_ROOT_URL>/<storagePath>/<feature>.json`
of type `VizFile`: `ranges` keyed "0-0.25" .. "0.75-1" (per-protein max over the feature's max over
the index, ranges (start, end]) each holding `examples` (`SeqWithSAEActs`: sequence, per-residue
`sae_acts`, alphafold_id, uniprot_id, name), and `freq_active`, `n_seqs`, `top_pfam`, `max_act`, all
required. Their own tooling (interprot/make_viz_files) fills each range with the 12 proteins of
highest per-protein max in it among every sequence it ran; `pick_ranges` does the same over every
indexed protein. Our label fields sit under the extra key `plmlabel` (the viewer ignores it).

The viewer reads descriptions only from the `curated` list compiled into the app (SAEConfigs.ts), so
`write` also writes `SAEConfigs.plmlabel.ts`: an `SAEConfig` entry for this SAE whose `curated` list
holds our labels (`name` the label, `desc` the description and its score, Markdown-escaped since the
viewer renders `desc` as Markdown). It is written as the features stream by, entry by entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from storage.export import ExportExample, ExportFeature, ExportSae, label_fields

# Their act ranges, in their key spelling (`${start}-${end}` of JavaScript numbers: 0 and 1, not 0.0).
RANGES: tuple[tuple[float, float], ...] = ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1))
PER_RANGE = 12  # NUM_SEQS_PER_DIM of their make_viz_files (the viewer shows the first 9)
CONFIG_FILE = "SAEConfigs.plmlabel.ts"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()#!|~])")


def range_name(start: float, end: float) -> str:
    return f"{start:g}-{end:g}"


def pick_ranges(values: np.ndarray, feature_max: float, per_range: int = PER_RANGE) -> list[np.ndarray]:
    """Per range, the positions in `values` (per-protein maxima in ascending protein order) of the
    `per_range` highest maxima whose normalised value lies in (start, end], highest first (ties:
    lower position first)."""
    values = np.asarray(values, dtype=np.float64)
    if feature_max <= 0 or values.size == 0:
        return [np.zeros(0, dtype=np.int64) for _ in RANGES]
    normalized = values / feature_max
    order = np.lexsort((np.arange(values.size), -values))  # highest first, stable on position
    picks = []
    for start, end in RANGES:
        in_range = order[(normalized[order] > start) & (normalized[order] <= end)]
        picks.append(in_range[:per_range])
    return picks


def rounded(values: list[float], digits: int = 4) -> list[float]:
    """Activations for JSON, rounded at once (a Python round() per residue dominated the export)."""
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()  # type: ignore[no-any-return]


def _example_json(ex: ExportExample) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sae_acts": rounded(ex.activations),
        "sequence": ex.sequence,
        "alphafold_id": ex.accession,  # AlphaFold DB entries are keyed by UniProt accession
        "uniprot_id": ex.accession,
        "name": ex.name or ex.accession,
    }
    if not ex.all_residues:
        data["plmlabel_peak_only"] = True  # only the residue of the protein's max is known
    return data


def interprot_feature(sae: ExportSae, feature: ExportFeature) -> dict[str, Any]:
    """One viewer file: the examples bucketed by their normalised max, highest first."""
    # stable: equal maxima keep the order they came in (index order, as their heapq.nlargest keeps)
    active = sorted((ex for ex in feature.examples if ex.normalized > 0), key=lambda ex: -ex.max_activation)
    ranges = {}
    for start, end in RANGES:
        chosen = [ex for ex in active if start < ex.normalized <= end][:PER_RANGE]
        ranges[range_name(start, end)] = {"examples": [_example_json(ex) for ex in chosen]}
    return {
        "ranges": ranges,
        "freq_active": feature.frac_proteins or 0.0,
        "n_seqs": feature.n_active or 0,
        "top_pfam": [],  # Pfam is not among the Swiss-Prot fields we store
        "max_act": feature.max_activation or 0.0,
        "plmlabel": {"sae_id": sae.sae_id, **label_fields(feature)},
    }


# --- the SAEConfigs.ts entry -------------------------------------------------------------------------------
def markdown_text(text: str) -> str:
    """Untrusted text as Markdown that shows it literally (markdown-to-jsx renders inline HTML)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def ts_string(text: str) -> str:
    """A TypeScript string literal (JSON's, ASCII-only)."""
    return json.dumps(text, ensure_ascii=True)


def config_name(sae: ExportSae) -> str:
    return f"plmlabel-{sae.sae_id}"


def storage_path(sae: ExportSae) -> str:
    return "plmlabel/" + re.sub(r"[^A-Za-z0-9._-]+", "_", sae.sae_id)


def _base_model(sae: ExportSae) -> str:
    name = sae.plm_model or "unknown"
    if re.fullmatch(r"esm2_t\d+_\d+[MB]_UR50D", name):
        return f"[{name}](https://huggingface.co/facebook/{name})"
    return markdown_text(name)


def curated_entry(feature: ExportFeature) -> str:
    record = feature.record
    text = markdown_text(record.description or record.label or "")
    if record.pearson is not None:
        verdict = "validated" if record.validated else "not validated"
        text += (f"\n\nplmlabel: Pearson r {record.pearson:.2f} on {record.n_heldout} held-out proteins "
                 f"({verdict}).")
    group = "plmlabel: validated" if record.validated else "plmlabel: not validated"
    return (f"    {{ name: {ts_string(record.label or f'feature {record.feature}')}, dim: {record.feature}, "
            f"desc: {ts_string(text)}, group: {ts_string(group)} }},\n")


class ConfigWriter:
    """Writes SAEConfigs.plmlabel.ts while the features stream by."""

    def __init__(self, out: TextIO, sae: ExportSae) -> None:
        self.out, self.sae = out, sae
        self.first: int | None = None  # the viewer opens on `defaultDim`: the first validated label, else
        self.first_validated: int | None = None  # the first label
        out.write(
            "// Written by `plmlabel export --format interprot`: the SAEConfig entry that shows\n"
            "// plmlabel's labels in InterProt's viewer. Put this file beside viz/src/SAEConfigs.ts\n"
            "// and add the entry there:\n"
            f"//   import {{ PLMLABEL_SAE_NAME, PLMLABEL_SAE_CONFIG }} from \"./{CONFIG_FILE[:-3]}\";\n"
            "//   SAE_CONFIGS[PLMLABEL_SAE_NAME] = PLMLABEL_SAE_CONFIG;\n"
            f"// and serve the <feature>.json files at <STORAGE_ROOT_URL>/{storage_path(sae)}/.\n"
            "import type { CuratedFeature, SAEConfig } from \"./SAEConfigs\";\n\n"
            f"export const PLMLABEL_SAE_NAME = {ts_string(config_name(sae))};\n\n"
            "export const PLMLABEL_CURATED: CuratedFeature[] = [\n"
        )

    def add(self, feature: ExportFeature) -> None:
        self.out.write(curated_entry(feature))
        if self.first is None:
            self.first = feature.record.feature
        if feature.record.validated and self.first_validated is None:
            self.first_validated = feature.record.feature

    def close(self) -> None:
        sae = self.sae
        self.out.write(
            "];\n\n"
            "export const PLMLABEL_SAE_CONFIG: SAEConfig = {\n"
            f"  storagePath: {ts_string(storage_path(sae))},\n"
            f"  baseModel: {ts_string(_base_model(sae))},\n"
            "  trainingData: \"unknown (not recorded by plmlabel)\",\n"
            f"  numHiddenDims: {int(sae.d_sae or 0)},\n"
            f"  plmLayer: {int(sae.layer or 0)},\n"
            "  curated: PLMLABEL_CURATED,\n"
            f"  defaultDim: {next((d for d in (self.first_validated, self.first) if d is not None), 0)},\n"
            "  supportsCustomSequence: false,\n"
            "};\n"
        )


def write(sae: ExportSae, features: Iterable[ExportFeature], folder: Path) -> list[str]:
    names = []
    with (folder / CONFIG_FILE).open("w", encoding="utf-8") as config_file:
        config = ConfigWriter(config_file, sae)
        for feature in features:
            name = f"{feature.record.feature}.json"
            (folder / name).write_text(json.dumps(interprot_feature(sae, feature)), encoding="utf-8")
            config.add(feature)
            names.append(name)
        config.close()
    return [*names, CONFIG_FILE]
