"""Exports of one SAE's labels for the viewers people already use, written atomically.

Formats:
    interplm   LLM_Autointerp.csv as InterPLM's dashboard reads it: index column `Feature`, columns
               `Summary` (the description) and `Correlation` (Pearson r); it goes in the dashboard
               cache's `layer_<L>/` folder.
    interprot  one `<feature>.json` per feature in the shape of InterProt's viewer files: `ranges`
               keyed "0-0.25" .. "0.75-1" (normalised per-protein max activation) holding `examples`
               with `sequence` and per-residue `sae_acts`, plus `freq_active`, `max_act`, `top_pfam`;
               our label fields sit under the key `plmlabel`.
    jsonl      labels.jsonl, one label per line: PLM, SAE, layer, index, label, description, scores,
               provenance.
    html       a self-contained static viewer (storage/export_html.py).

This module takes plain data: `ExportBundle` (built from the database by `load_bundle`, with example
sequences attached by the caller, which owns the activation index). The output folder appears whole
or not at all: files go to a temporary folder beside it that is renamed into place at the end. No
secrets are ever exported: only label, score and provenance columns are read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from storage.csv_safe import write_table
from storage.db import Database, utcnow
from storage.errors import InputError
from storage.features_store import feature_stats_of
from storage.labels import StoredLabel, get_label
from storage.paths import model_display_name
from storage.saes import get_sae
from storage.suggestions import Suggestion, list_suggestions

FORMATS: tuple[str, ...] = ("interplm", "interprot", "jsonl", "html")
MANIFEST_NAME = "plmlabel-export.json"
INTERPLM_FILE = "LLM_Autointerp.csv"
JSONL_FILE = "labels.jsonl"
# InterProt's viewer shows the top sequences of each normalised-activation range, (start, end].
INTERPROT_RANGES: tuple[tuple[float, float], ...] = ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1))
INTERPROT_PER_RANGE = 12


class ExportAnnotation(BaseModel):
    """One Swiss-Prot sequence annotation of an example protein (1-based, inclusive)."""

    type: str
    start: int | None
    end: int | None
    description: str | None = None


class ExportExample(BaseModel):
    """One example protein with its per-residue activations (dense, aligned with `sequence`)."""

    accession: str
    name: str | None = None
    organism: str | None = None
    sequence: str
    kind: str = "top"  # "top", "quantile" or "silent"
    max_activation: float
    normalized: float
    activations: list[float]
    annotations: list[ExportAnnotation] = []  # Swiss-Prot tracks the HTML viewer draws
    suggestions: list[Suggestion] = []  # `plmlabel suggest` rows about this protein (any feature)


class ActivationHistogram(BaseModel):
    """Per-protein max activation over the indexed proteins: `counts[i]` of those firing fall in
    (edges[i], edges[i+1]] of the normalised max; `n_silent` proteins never fire."""

    edges: list[float]
    counts: list[int]
    n_silent: int
    n_proteins: int


class ExportSae(BaseModel):
    sae_id: str
    architecture: str | None = None
    d_in: int | None = None
    d_sae: int | None = None
    k: int | None = None
    plm_model: str | None = None
    layer: int | None = None


class ExportFeature(BaseModel):
    """A label with what the viewers show beside it."""

    record: StoredLabel
    max_activation: float | None = None
    frac_proteins: float | None = None
    top_concepts: list[dict[str, Any]] = []
    n_active: int | None = None  # proteins of the index where the feature fires, when known
    examples: list[ExportExample] = []
    frac_residues: float | None = None
    histogram: ActivationHistogram | None = None
    suggestions: list[Suggestion] = []  # `plmlabel suggest` rows of this feature, best first


class ExportBundle(BaseModel):
    sae: ExportSae
    features: list[ExportFeature]
    has_examples: bool = False  # whether example sequences were attached (an index exists)


class ExportResult(BaseModel):
    out_dir: Path
    format: str
    n_features: int
    files: list[str]  # relative to out_dir
    has_examples: bool


# --- reading ---------------------------------------------------------------------------------------
def load_bundle(db: Database, sae_id: str, *, validated_only: bool = False) -> ExportBundle:
    """The SAE and its successful labels, with per-feature statistics; no examples yet."""
    return ExportBundle(sae=export_sae(db, sae_id),
                        features=list(iter_export_features(db, sae_id, validated_only=validated_only)))


def export_sae(db: Database, sae_id: str) -> ExportSae:
    """The header every export carries (NotFoundError for an unknown SAE)."""
    record = get_sae(db, sae_id)
    sae = ExportSae(**{key: getattr(record, key) for key in ExportSae.model_fields})
    sae.plm_model = model_display_name(sae.plm_model)  # never a local path in a file meant to be shared
    return sae


def count_export_features(db: Database, sae_id: str, *, validated_only: bool = False) -> int:
    sql = "select count(*) from labels where sae_id = ? and status = 'ok'"
    row = db.execute(sql + (" and validated = 1" if validated_only else ""), (sae_id,)).fetchone()
    return int(row[0])


def neighbour_features(db: Database, sae_id: str, feature: int, *,
                       validated_only: bool = False) -> tuple[int | None, int | None]:
    """The labeled features just before and after `feature` (what a page's previous/next link to)."""
    where = "sae_id = ? and status = 'ok'" + (" and validated = 1" if validated_only else "")
    before = db.execute(f"select max(feature) from labels where {where} and feature < ?", (sae_id, feature))
    after = db.execute(f"select min(feature) from labels where {where} and feature > ?", (sae_id, feature))
    return before.fetchone()[0], after.fetchone()[0]


def iter_export_features(db: Database, sae_id: str, *, validated_only: bool = False,
                         batch_size: int = 200, only: list[int] | None = None) -> Iterator[ExportFeature]:
    """The successful labels of `sae_id` by feature (of `only`, when given), with statistics and
    suggestions, read `batch_size` features at a time, so memory does not grow with their number."""
    last = -1
    while True:
        sql = ("select feature from labels where sae_id = ? and status = 'ok' and feature > ?"
               + (" and validated = 1" if validated_only else "")
               + (f" and feature in ({','.join(str(int(f)) for f in only)})" if only is not None else "")
               + " order by feature limit ?")
        ids = [int(r[0]) for r in db.execute(sql, (sae_id, last, batch_size)).fetchall()]
        if not ids:
            return
        stats = feature_stats_of(db, sae_id, ids)
        suggestions: dict[int, list[Suggestion]] = {}
        for s in _suggestions_of(db, sae_id, ids):
            suggestions.setdefault(s.feature, []).append(s)
        for feature in ids:
            label = get_label(db, sae_id, feature, with_predictions=True)
            if label is None or label.status != "ok":
                continue  # relabeled meanwhile
            row = stats.get(feature)
            yield ExportFeature(
                record=label,
                max_activation=row.max_activation if row else None,
                frac_proteins=row.frac_proteins if row else None,
                frac_residues=row.frac_residues if row else None,
                top_concepts=[dict(c) for c in row.top_concepts] if row else [],
                suggestions=suggestions.get(feature, []),
            )
        last = ids[-1]


def _suggestions_of(db: Database, sae_id: str, features: list[int]) -> list[Suggestion]:
    return [s for f in features for s in list_suggestions(db, sae_id, f)]


# --- shared pieces -----------------------------------------------------------------------------------
def provenance(record: StoredLabel) -> dict[str, Any]:
    return {
        "backend": record.backend,
        "explainer_model": record.explainer_model,
        "simulator_model": record.simulator_model,
        "explain_prompt": record.explain_prompt,
        "explain_prompt_version": record.explain_prompt_version,
        "simulate_prompt": record.simulate_prompt,
        "simulate_prompt_version": record.simulate_prompt_version,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost_usd": record.cost_usd,
        "run_id": record.run_id,
        "created_at": record.created_at,
    }


def scores(record: StoredLabel) -> dict[str, Any]:
    return {
        "pearson": record.pearson,
        "spearman": record.spearman,
        "residue_pearson": record.residue_pearson,
        "n_heldout": record.n_heldout,
        "validated": record.validated,
    }


def label_fields(feature: ExportFeature) -> dict[str, Any]:
    """Our fields for one feature (no examples): what every format carries."""
    record = feature.record
    return {
        "index": record.feature,
        "label": record.label,
        "description": record.description,
        "concepts": record.concepts,
        "confidence": record.confidence,
        "scores": scores(record),
        "provenance": provenance(record),
        "max_activation": feature.max_activation,
        "frac_proteins": feature.frac_proteins,
        "top_concepts": feature.top_concepts,
    }


# --- formats -----------------------------------------------------------------------------------------
def render_interplm(bundle: ExportBundle) -> str:
    """LLM_Autointerp.csv: Feature,Summary,Correlation (an empty Correlation reads as NaN); text
    cells that a spreadsheet would run as a formula are neutralised (storage/csv_safe.py)."""
    rows = []
    for feature in bundle.features:
        record = feature.record
        pearson = None if record.pearson is None else round(record.pearson, 4)
        rows.append([record.feature, record.description or record.label or "", pearson])
    return write_table(["Feature", "Summary", "Correlation"], rows)


def write_interplm(bundle: ExportBundle, folder: Path) -> list[str]:
    (folder / INTERPLM_FILE).write_text(render_interplm(bundle), encoding="utf-8")
    return [INTERPLM_FILE]


def _range_name(start: float, end: float) -> str:
    return f"{start:g}-{end:g}"


def interprot_feature(bundle: ExportBundle, feature: ExportFeature) -> dict[str, Any]:
    """One InterProt viewer file: activation ranges with example sequences, plus `plmlabel`."""
    ranges: dict[str, Any] = {}
    active = sorted(
        (ex for ex in feature.examples if ex.normalized > 0),
        key=lambda ex: (-ex.max_activation, ex.accession),
    )
    for start, end in INTERPROT_RANGES:
        chosen = [ex for ex in active if start < ex.normalized <= end][:INTERPROT_PER_RANGE]
        ranges[_range_name(start, end)] = {
            "examples": [
                {
                    "sae_acts": [round(value, 4) for value in ex.activations],
                    "sequence": ex.sequence,
                    "alphafold_id": ex.accession,  # AlphaFold DB entries are keyed by UniProt accession
                    "uniprot_id": ex.accession,
                    "name": ex.name or ex.accession,
                }
                for ex in chosen
            ]
        }
    data: dict[str, Any] = {"ranges": ranges, "top_pfam": []}
    if feature.frac_proteins is not None:
        data["freq_active"] = feature.frac_proteins
    if feature.n_active is not None:
        data["n_seqs"] = feature.n_active
    if feature.max_activation is not None:
        data["max_act"] = feature.max_activation
    data["plmlabel"] = {"sae_id": bundle.sae.sae_id, **label_fields(feature)}
    return data


def write_interprot(bundle: ExportBundle, folder: Path) -> list[str]:
    names = []
    for feature in bundle.features:
        name = f"{feature.record.feature}.json"
        (folder / name).write_text(json.dumps(interprot_feature(bundle, feature)), encoding="utf-8")
        names.append(name)
    return names


def jsonl_line(bundle: ExportBundle, feature: ExportFeature) -> dict[str, Any]:
    sae = bundle.sae
    return {
        "plm_model": sae.plm_model,
        "layer": sae.layer,
        "sae_id": sae.sae_id,
        "architecture": sae.architecture,
        "d_sae": sae.d_sae,
        **label_fields(feature),
    }


def render_jsonl(bundle: ExportBundle) -> str:
    return "".join(
        json.dumps(jsonl_line(bundle, feature), sort_keys=True) + "\n" for feature in bundle.features
    )


def write_jsonl(bundle: ExportBundle, folder: Path) -> list[str]:
    (folder / JSONL_FILE).write_text(render_jsonl(bundle), encoding="utf-8")
    return [JSONL_FILE]


def _write_html(bundle: ExportBundle, folder: Path) -> list[str]:
    from storage.export_html import write_html  # the viewer's templates load only when asked for

    return write_html(bundle, folder)


WRITERS: dict[str, Callable[[ExportBundle, Path], list[str]]] = {
    "interplm": write_interplm,
    "interprot": write_interprot,
    "jsonl": write_jsonl,
    "html": _write_html,
}


# --- the atomic folder -------------------------------------------------------------------------------
# What exports written before manifests listed their files wrote, by format (to re-export over them).
_LEGACY_FILES: dict[str, re.Pattern[str]] = {
    "interplm": re.compile(re.escape(INTERPLM_FILE)),
    "interprot": re.compile(r"\d+\.json"),
    "jsonl": re.compile(re.escape(JSONL_FILE)),
    "html": re.compile(r"index\.html|features|features/\d+\.html"),
}


def _tree(folder: Path) -> list[str]:
    """Every file, link and folder under `folder`, relative, with / separators (links not followed)."""
    entries = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        entries.extend((base / name).as_posix() for name in (*dirs, *files))
    return sorted(entries)


def _written_by_export(manifest: dict[str, Any]) -> Callable[[str], bool]:
    """Whether a relative path is one the export described by `manifest` wrote (its folders too)."""
    written = manifest.get("written")
    if isinstance(written, list):
        names = {str(name) for name in written}
        folders = {parent.as_posix() for name in names for parent in Path(name).parents} - {"."}
        return lambda path: path in names or path in folders
    legacy = _LEGACY_FILES.get(str(manifest.get("format")))
    if legacy is None:
        return lambda path: False
    return lambda path: bool(legacy.fullmatch(path))


def _foreign_entries(out_dir: Path) -> list[str] | None:
    """What in `out_dir` an earlier export did not write; None when `out_dir` holds no export at all."""
    if not out_dir.exists():
        return []
    entries = [path for path in _tree(out_dir) if path != MANIFEST_NAME]
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None if entries else []
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        return entries or [MANIFEST_NAME]
    ours = _written_by_export(manifest)
    return [path for path in entries if not ours(path)]


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, a folder that cannot be written or must not be replaced.

    An earlier export there is replaced only when everything in the folder is a file that export wrote
    (its manifest lists them): a file a person put there is never deleted; the export refuses instead.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot export to {out}: it is a file, not a folder.")
    foreign = _foreign_entries(out)
    if foreign is None:
        raise InputError(f"{out} exists and is not a plmlabel export; choose a new or empty folder.")
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{out} holds an earlier export and files it did not write ({foreign[0]}{more}); "
                         "move them away or choose another folder.")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write to {out}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(f"cannot write to {out}: permission denied.")
    return out


def write_export(bundle: ExportBundle, fmt: str, out_dir: str | os.PathLike[str]) -> ExportResult:
    """Write `bundle` in format `fmt` to `out_dir`, replacing an earlier export there, atomically."""
    if fmt not in WRITERS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = check_out_dir(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}.") from exc
    try:
        files = WRITERS[fmt](bundle, staging)
        manifest = {
            "format": fmt,
            "sae_id": bundle.sae.sae_id,
            "plm_model": bundle.sae.plm_model,
            "layer": bundle.sae.layer,
            "n_features": len(bundle.features),
            "has_examples": bundle.has_examples,
            "files": len(files),
            "written": [path for path in _tree(staging) if (staging / path).is_file()],  # replaceable
            "created_at": utcnow(),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        _swap_into_place(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}.") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(
        out_dir=out, format=fmt, n_features=len(bundle.features), files=files,
        has_examples=bundle.has_examples,
    )


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an earlier export at `out` is moved aside first and then removed."""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)  # put the earlier export back
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "FORMATS",
    "ExportBundle",
    "ExportExample",
    "ExportFeature",
    "ExportResult",
    "ExportSae",
    "interprot_feature",
    "jsonl_line",
    "count_export_features",
    "export_sae",
    "iter_export_features",
    "neighbour_features",
    "load_bundle",
    "render_interplm",
    "render_jsonl",
    "check_out_dir",
    "write_export",
]
