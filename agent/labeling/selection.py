"""Which features a job labels: an explicit selection (`label`) or the nightly one (`label --nightly`).

    parse_feature_spec("0-99,120") -> [0, ..., 99, 120]
    plan_features(db, sae_id, FeatureSelection(...)) -> Plan       to label, and skipped (already ok)
    plan_features(db, sae_id, FeatureSelection(select="informative", limit=48), n_indexed=300)

A selection is one of: explicit ids, all, unlabeled, `top` (the N live features firing on the most
proteins) or `select="informative"` (agent/labeling/informative.py: the features worth labeling,
ranked, each with its reason in `Plan.reasons`). `limit` keeps the first N of a selection, in its
order (ids ascending, or the ranking), before labeled ones are skipped, so a rerun picks the same.
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
from typing import Literal

from pydantic import BaseModel, Field

from agent.labeling.informative import FeatureProfile, rank_informative
from storage.db import Database
from storage.errors import InputError, NotFoundError
from storage.labels import label_states, stale_features

SELECTORS = ("--features", "--all", "--unlabeled", "--top", "--select")
SELECT_KINDS = ("informative",)


def exclusive_error(given: Sequence[str]) -> InputError:
    return InputError(f"--features, --all, --unlabeled, --top and --select are exclusive; "
                      f"{' and '.join(given)} were given: choose one.")


class FeatureSelection(BaseModel):
    """Which features a job covers. Exactly one of features / all / unlabeled / top / select."""

    features: list[int] | None = None  # explicit ids
    all: bool = False  # every indexed feature
    unlabeled: bool = False  # indexed features without an ok label (never labeled, or failed)
    top: int | None = Field(default=None, ge=1)  # the N live features firing on the most proteins
    select: Literal["informative"] | None = None  # ranked by agent/labeling/informative.py
    limit: int | None = Field(default=None, ge=1)  # keep the first N of the selection (not with top)
    relabel: bool = False  # label again features that already have an ok label

    def given(self) -> list[str]:
        """The selector flags set, in the order of SELECTORS."""
        flags = (self.features is not None, self.all, self.unlabeled, self.top is not None,
                 self.select is not None)
        return [name for name, set_ in zip(SELECTORS, flags, strict=True) if set_]

    def describe(self) -> str:
        if self.features is not None:
            text = format_feature_spec(self.features)
        elif self.top is not None:
            text = f"top {self.top}"
        elif self.select is not None:
            text = self.select
        else:
            text = "all" if self.all else "unlabeled"
        return text if self.limit is None else f"{text}, limit {self.limit}"


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
    reasons: dict[int, str] = field(default_factory=dict)  # why each was picked (--select)
    note: str | None = None  # how a --select chose them, in one line


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


def plan_features(db: Database, sae_id: str, selection: FeatureSelection, *,
                  n_indexed: int | None = None) -> Plan:
    """Resolve a selection against the index and the label store.

    `n_indexed` (proteins in the index) is needed by `select="informative"` only.
    """
    given = selection.given()
    if not given:
        raise InputError("say which features to label: one of --features, --all, --unlabeled, --top N "
                         "or --select informative.")
    if len(given) > 1:
        raise exclusive_error(given)
    if selection.top is not None and selection.limit is not None:
        raise InputError("--top N already says how many; drop --limit (or use --select informative "
                         "--limit N).")
    stats = indexed_features(db, sae_id)
    done = {f for f, s in label_states(db, sae_id).items() if s.status == "ok"}
    reasons: dict[int, str] = {}
    note = None
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
    elif selection.select is not None:
        if n_indexed is None:
            raise ValueError("select='informative' needs n_indexed (the proteins in the index)")
        ranking = rank_informative(feature_profiles(db, sae_id), n_indexed=n_indexed)
        picks = ranking.picks[: selection.limit]
        reasons = {p.feature: p.reason for p in picks}
        note = ranking.note(len(picks))
        wanted = [p.feature for p in picks]
    elif selection.unlabeled:
        return Plan([f for f in sorted(stats) if f not in done][: selection.limit], [])
    else:
        wanted = sorted(stats)
    wanted = wanted[: selection.limit]
    if selection.relabel:
        return Plan(wanted, [], reasons, note)
    return Plan([f for f in wanted if f not in done], [f for f in wanted if f in done], reasons, note)


def feature_profiles(db: Database, sae_id: str) -> list[FeatureProfile]:
    """What `--select informative` ranks: each indexed feature's statistics and best concept by test F1
    (from the top concepts `plmlabel concepts` stored with it)."""
    from storage.features_store import list_feature_stats

    profiles = []
    for s in list_feature_stats(db, sae_id):
        scored = [c for c in s.top_concepts if c.get("concept") and c.get("f1_test") is not None]
        best = max(scored, key=lambda c: float(c["f1_test"]), default=None)
        profiles.append(FeatureProfile(
            feature=s.feature, max_activation=s.max_activation, frac_proteins=s.frac_proteins,
            quantiles=s.quantiles, concept=str(best["concept"]) if best else None,
            f1_test=float(best["f1_test"]) if best else None,
        ))
    return profiles


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
