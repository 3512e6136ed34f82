"""Which features a job labels: an explicit selection (`label`) or the nightly one (`label --nightly`).

    parse_feature_spec("0-99,120") -> [0, ..., 99, 120]
    plan_features(db, sae_id, FeatureSelection(...)) -> Plan       to label, and skipped (already ok)
    select_nightly(db, sae_id, model=..., prompt_versions=...) -> NightlySelection

What a nightly run labels, in this order (a budget stops it partway, and the next run goes on):
1. new: indexed features that fire on some protein and have no label yet;
2. failed before: features whose stored attempt failed (provider errors, malformed answers, expired
   batch requests...), so a failure is retried the next night;
3. only with `relabel_stale`: ok labels made with another explain or simulate prompt version, or
   another model, than this run's.
Features that never fire (dead) are not labeled; features with a request in a provider batch still
in flight are left to the batch run that collects them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from storage.db import Database
from storage.errors import InputError, NotFoundError
from storage.labels import label_states, stale_features

SELECTORS = ("--features", "--all", "--unlabeled", "--top")


class FeatureSelection(BaseModel):
    """Which features a job covers. Exactly one of features / all / unlabeled / top."""

    features: list[int] | None = None  # explicit ids
    all: bool = False  # every indexed feature
    unlabeled: bool = False  # indexed features without an ok label (never labeled, or failed)
    top: int | None = Field(default=None, ge=1)  # the N live features firing on the most proteins
    relabel: bool = False  # label again features that already have an ok label

    def given(self) -> list[str]:
        """The selector flags set, in the order of SELECTORS."""
        flags = (self.features is not None, self.all, self.unlabeled, self.top is not None)
        return [name for name, set_ in zip(SELECTORS, flags, strict=True) if set_]

    def describe(self) -> str:
        if self.features is not None:
            return format_feature_spec(self.features)
        if self.top is not None:
            return f"top {self.top}"
        return "all" if self.all else "unlabeled"


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_feature_spec(spec: str) -> list[int]:
    """'0-99,120' -> [0, ..., 99, 120] (sorted, unique). InputError on anything else."""
    features: set[int] = set()
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise InputError(f"bad feature list {spec!r}: expected ids and ranges such as 0-99,120.")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise InputError(f"bad feature range {part.strip()!r}: the end is before the start.")
        if end - start > 10_000_000:
            raise InputError(f"feature range {part.strip()!r} is too large.")
        features.update(range(start, end + 1))
    return sorted(features)


def format_feature_spec(features: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts: list[str] = []
    ordered = sorted(set(features))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Plan:
    features: list[int]  # to label, in order
    skipped: list[int]  # selected but already labeled ok (and no --relabel)


def indexed_features(db: Database, sae_id: str) -> dict[int, tuple[float, float]]:
    """feature -> (max_activation, frac_proteins) for every indexed feature of the SAE.

    NotFoundError when the SAE is unknown or has no index yet.
    """
    from storage.features_store import list_feature_stats
    from storage.saes import get_sae

    get_sae(db, sae_id)
    stats = {s.feature: (s.max_activation, s.frac_proteins) for s in list_feature_stats(db, sae_id)}
    if not stats:
        raise NotFoundError(f"SAE {sae_id!r} has no activation index; run `plmlabel index {sae_id}` first.")
    return stats


def plan_features(db: Database, sae_id: str, selection: FeatureSelection) -> Plan:
    """Resolve a selection against the index and the label store."""
    given = selection.given()
    if not given:
        raise InputError("say which features to label: one of --features, --all, --unlabeled or --top N.")
    if len(given) > 1:
        raise InputError(
            f"--features, --all, --unlabeled and --top are exclusive; {' and '.join(given)} "
            "were given: choose one."
        )
    stats = indexed_features(db, sae_id)
    done = {f for f, s in label_states(db, sae_id).items() if s.status == "ok"}
    if selection.features is not None:
        unknown = [f for f in selection.features if f not in stats]
        if unknown:
            shown = format_feature_spec(unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise InputError(
                f"SAE {sae_id!r} has no feature {shown} (its index holds features 0-{max(stats)})."
            )
        wanted = list(selection.features)
    elif selection.top is not None:
        live = [f for f, (peak, _) in stats.items() if peak > 0]
        live.sort(key=lambda f: (-stats[f][1], -stats[f][0], f))
        wanted = live[: selection.top]
    elif selection.unlabeled:
        return Plan([f for f in sorted(stats) if f not in done], [])
    else:
        wanted = sorted(stats)
    if selection.relabel:
        return Plan(wanted, [])
    return Plan([f for f in wanted if f not in done], [f for f in wanted if f in done])


@dataclass(frozen=True)
class NightlySelection:
    new: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)  # failed before
    stale: list[int] = field(default_factory=list)
    up_to_date: int = 0  # live features with a current ok label
    dead: int = 0  # indexed features that never fire
    in_flight: int = 0  # selected otherwise, but a provider batch has them

    @property
    def features(self) -> list[int]:
        return [*self.new, *self.retry, *self.stale]


def select_nightly(
    db: Database,
    sae_id: str,
    *,
    model: str,
    prompt_versions: Mapping[str, str | None],
    relabel_stale: bool = False,
    in_flight: set[int] | None = None,
) -> NightlySelection:
    """What a nightly run of `model` with these prompt versions labels (see the module docstring)."""
    stats = indexed_features(db, sae_id)
    live = {f for f, (peak, _) in stats.items() if peak > 0}
    states = label_states(db, sae_id)
    stale: set[int] = set()
    if relabel_stale:
        stale = stale_features(
            db,
            sae_id,
            explain_prompt_version=prompt_versions.get("explain"),
            simulate_prompt_version=prompt_versions.get("simulate"),
            model=model,
        )
    busy = in_flight or set()
    new, retry, old = [], [], []
    for feature in sorted(live):
        state = states.get(feature)
        if state is None:
            new.append(feature)
        elif state.status != "ok":
            retry.append(feature)
        elif feature in stale:
            old.append(feature)
    n_busy = sum(1 for f in (*new, *retry, *old) if f in busy)
    return NightlySelection(
        new=[f for f in new if f not in busy],
        retry=[f for f in retry if f not in busy],
        stale=[f for f in old if f not in busy],
        up_to_date=sum(1 for f in live if f in states and states[f].status == "ok" and f not in stale),
        dead=len(stats) - len(live),
        in_flight=n_busy,
    )
