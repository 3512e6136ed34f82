"""Where a job's examples come from, and what an unreadable index does to a run (both transports).

    load = index_examples(workspace, db, sae_id)     # feature -> FeatureExamples, from the index
    examples = load_or_fail(writer, load, feature, left=n)

A feature whose examples cannot be loaded (a damaged or rebuilt index, a protein gone from the
database) is stored failed with the reason, and the run stops: the index itself is at fault, so
every further feature would fail alike. The features not started are counted.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.labeling.protocol import failed
from agent.labeling.writer import RunWriter
from sae.index import FeatureExamples
from storage.db import Database
from storage.errors import PlmlabelError
from storage.workspace import Workspace

LoadExamples = Callable[[int], FeatureExamples]


def index_examples(workspace: Workspace, db: Database, sae_id: str) -> LoadExamples:
    """The activation index's examples of each feature."""
    from sae.index import load_feature_examples

    return lambda feature: load_feature_examples(workspace, db, sae_id, feature)


def load_or_fail(writer: RunWriter, load: LoadExamples, feature: int, *, left: int) -> FeatureExamples | None:
    """The feature's examples; None after storing it failed (fatal: the run stops, `left` not started)."""
    try:
        return load(feature)
    except PlmlabelError as exc:
        writer.store(
            failed(
                feature,
                f"could not load its examples: {exc}",
                fatal=True,
                prompt_versions=writer.labeler.prompt_versions,
            )
        )
        writer.not_started += left
        return None
