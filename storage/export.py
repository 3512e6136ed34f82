"""Exports of one SAE's labels for the viewers people already use, written atomically and streamed.

Formats, one module each (a writer takes the `ExportSae` header and an iterable of `ExportFeature` and
writes each feature as it comes, so memory stays flat in the number of features):
    interplm     storage/export_interplm.py: LLM_Autointerp.csv for InterPLM's dashboard.
    interprot    storage/export_interprot.py: one `<feature>.json` per feature as InterProt's viewer
                 reads it, plus the `SAEConfigs.ts` entry that shows our descriptions.
    neuronpedia  storage/export_neuronpedia.py: request bodies for Neuronpedia's feature upload-batch.
    jsonl        storage/export_jsonl.py: labels.jsonl, one label per line.
    html         a self-contained static viewer (storage/export_html.py; takes the whole bundle).

This module holds the plain data (`ExportBundle`, built from the database by `load_bundle` or streamed
by `iter_export_features`, with example sequences attached by the caller, which owns the activation
index), the fields every format shares, and the atomic folder: files go to a temporary folder beside
the output that is renamed into place at the end. No secrets are ever exported: only label, score and
provenance columns are read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from storage.db import Database, utcnow
from storage.errors import InputError
from storage.features_store import feature_stats_of
from storage.labels import StoredLabel, get_label
from storage.paths import model_display_name
from storage.saes import get_sae
from storage.suggestions import Suggestion, list_suggestions

FORMATS: tuple[str, ...] = ("interplm", "interprot", "neuronpedia", "jsonl", "html")
WITH_EXAMPLES: tuple[str, ...] = ("interprot", "neuronpedia", "html")  # the others are label tables
NEEDS_INDEX: tuple[str, ...] = ("interprot", "neuronpedia")  # their viewers show nothing without examples
MANIFEST_NAME = "plmlabel-export.json"
INTERPLM_FILE = "LLM_Autointerp.csv"  # kept here: the CLI names it


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
    # False when the index holds only this protein's peak residue for the feature (it keeps every
    # residue only for the feature's example and held-out proteins): `activations` is then zero
    # except at the peak.
    all_residues: bool = True
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
                         batch_size: int = 200, only: list[int] | None = None,
                         with_predictions: bool = True) -> Iterator[ExportFeature]:
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
            label = get_label(db, sae_id, feature, with_predictions=with_predictions)
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


# --- formats: one module each; a writer takes the header and the features and writes as it goes --------
Writer = Callable[[ExportSae, Iterable[ExportFeature], Path], list[str]]


def _module_writer(fmt: str) -> Writer:
    def write(sae: ExportSae, features: Iterable[ExportFeature], folder: Path) -> list[str]:
        module = import_module(f"storage.export_{fmt}")  # at call time: those modules import this one
        return module.write(sae, features, folder)  # type: ignore[no-any-return]

    return write


def _write_html(sae: ExportSae, features: Iterable[ExportFeature], folder: Path, *,
                bundle: ExportBundle | None = None) -> list[str]:
    from storage.export_html import write_html  # the viewer's templates load only when asked for

    return write_html(bundle or ExportBundle.model_construct(sae=sae, features=features), folder)


WRITERS: dict[str, Writer] = {fmt: _module_writer(fmt) for fmt in FORMATS if fmt != "html"}
WRITERS["html"] = _write_html


class _Counted:
    """Passes features through, counting them (a stream has no length until it is read)."""

    def __init__(self, features: Iterable[ExportFeature]) -> None:
        self.features, self.n = features, 0

    def __iter__(self) -> Iterator[ExportFeature]:
        for feature in self.features:
            self.n += 1
            yield feature


# --- the atomic folder -------------------------------------------------------------------------------
# What exports written before manifests listed their files wrote, by format (to re-export over them).
_LEGACY_FILES: dict[str, re.Pattern[str]] = {
    "interplm": re.compile(re.escape(INTERPLM_FILE)),
    "interprot": re.compile(r"\d+\.json"),
    "jsonl": re.compile(re.escape("labels.jsonl")),
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
    """Write `bundle` in format `fmt` to `out_dir`, replacing an earlier export there, atomically.

    `bundle.features` may be any iterable (a generator streams: each feature is written as it is read
    and then dropped); html gets the bundle itself (it reads the features more than once).
    """
    if fmt not in WRITERS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = check_out_dir(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}.") from exc
    try:
        if fmt == "html":
            files = WRITERS[fmt](bundle.sae, bundle.features, staging, bundle=bundle)  # type: ignore[call-arg]
            n_features = len(bundle.features)
        else:
            counted = _Counted(bundle.features)
            files = WRITERS[fmt](bundle.sae, counted, staging)
            n_features = counted.n
        manifest = {
            "format": fmt,
            "sae_id": bundle.sae.sae_id,
            "plm_model": bundle.sae.plm_model,
            "layer": bundle.sae.layer,
            "n_features": n_features,
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
        out_dir=out, format=fmt, n_features=n_features, files=files,
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
    "NEEDS_INDEX",
    "WITH_EXAMPLES",
    "count_export_features",
    "export_sae",
    "iter_export_features",
    "neighbour_features",
    "label_fields",
    "load_bundle",
    "check_out_dir",
    "write_export",
]
