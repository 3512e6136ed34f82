"""Gather what an export needs: the stored labels (storage.export) plus example sequences (sae.index).

storage/ must not import sae/, so the join of labels with the activation index happens here, in the
application layer; `plmlabel export` and `plmlabel demo` both call `gather_bundle`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sae.index import FeatureExamples, load_feature_examples, open_index
from storage.errors import PlmlabelError
from storage.export import ExportBundle, ExportExample, load_bundle
from storage.workspace import Workspace

# The formats that carry example sequences (the others are label tables).
WITH_EXAMPLES = ("interprot", "html")


def export_examples(examples: FeatureExamples) -> list[ExportExample]:
    """FeatureExamples -> the plain examples storage/export.py writes, activations dense per residue."""
    converted = []
    for ex in examples.examples:
        sequence = ex.protein.sequence
        activations = [0.0] * len(sequence)
        for residue in ex.firing:
            if 1 <= residue.position <= len(sequence):
                activations[residue.position - 1] = float(residue.value)
        converted.append(
            ExportExample(
                accession=ex.protein.accession,
                name=ex.protein.protein_name or ex.protein.entry_name,
                organism=ex.protein.organism,
                sequence=sequence,
                kind=ex.kind,
                max_activation=ex.max_activation,
                normalized=ex.normalized,
                activations=activations,
            )
        )
    return converted


def attach_examples(ws: Workspace, db: Any, bundle: ExportBundle,
                    advance: Callable[[], None] | None = None) -> list[str]:
    """Fill each feature's examples from the activation index; returns why features had none."""
    problems: list[str] = []
    for feature in bundle.features:
        try:
            examples = load_feature_examples(ws, db, bundle.sae.sae_id, feature.record.feature)
        except PlmlabelError as exc:
            problems.append(str(exc))
        else:
            feature.examples = export_examples(examples)
            if examples.n_indexed:
                feature.n_active = round(examples.frac_proteins * examples.n_indexed)
        if advance:
            advance()
    bundle.has_examples = True
    return problems


def index_problem(ws: Workspace, sae_id: str) -> str | None:
    """Why the SAE's activation index cannot be read, or None when it can."""
    try:
        open_index(ws, sae_id)
    except PlmlabelError as exc:
        return str(exc)
    return None


def gather_bundle(ws: Workspace, db: Any, sae_id: str, fmt: str, *, validated_only: bool = False,
                  warn: Callable[[str], None] | None = None,
                  advance: Callable[[], None] | None = None) -> ExportBundle:
    """The labels of `sae_id`, with example sequences when `fmt` shows them and the index exists."""
    bundle = load_bundle(db, sae_id, validated_only=validated_only)
    if fmt in WITH_EXAMPLES:
        problem = index_problem(ws, sae_id)
        if problem:
            if warn:
                warn(f"{problem.rstrip('.')}; exporting labels without example sequences.")
        else:
            problems = attach_examples(ws, db, bundle, advance)
            if problems and warn:
                warn(f"{len(problems)} feature(s) have no examples ({problems[0].rstrip('.')}).")
    return bundle
