"""Choose one feature's example proteins and its held-out proteins from its per-protein maxima.

Examples (what the explainer sees): the `n_top` strongest proteins, `per_bin` random proteins from
each 0.1-wide bin of normalised max activation, and `n_silent` random proteins where the feature is
silent. Held-out: proteins disjoint from the examples, drawn from the same strata (the ten bins and
"silent") in proportion to how many examples each stratum holds, with at least one from every stratum
the examples occupy where one is left. They come in two disjoint halves, each matched that way:

- the test half (`n_heldout`, kind "heldout"): what a label is scored on, once. It is drawn first,
  with the same random draws as before the split existed, so the one-shot scorer's set is unchanged;
- the validation half (`n_validation`, kind "validation"): drawn next from what is left; the only
  held-out proteins whose activations the agent (agent/agentic/) may ever see.

Everything is drawn from `numpy.random.default_rng([seed, feature])`, so a feature's sets depend
only on the seed and its own activations, not on the order features are processed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sae.index_store import KIND_HELDOUT, KIND_QUANTILE, KIND_SILENT, KIND_TOP, KIND_VALIDATION, N_BINS

SILENT = -1  # stratum of proteins where the feature never fires


@dataclass(frozen=True)
class ExampleSizes:
    n_top: int = 10
    per_bin: int = 2
    n_silent: int = 10
    n_heldout: int = 24  # the test half
    n_validation: int = 24  # the validation half (0: none, as in indexes of format 1)

    @property
    def n_slots(self) -> int:
        return self.n_top + N_BINS * self.per_bin + self.n_silent + self.n_heldout + self.n_validation


@dataclass
class Selection:
    proteins: np.ndarray  # int64 protein ids, examples then held-out
    kinds: np.ndarray  # int8 KIND_*
    values: np.ndarray  # float32 raw per-protein max (0 for silent)


def bins_of(values: np.ndarray, feature_max: float) -> np.ndarray:
    """Bin 0..9 of each non-zero per-protein max, by its value over the feature's max."""
    if feature_max <= 0:
        return np.zeros(len(values), dtype=np.int64)
    return np.minimum((values / feature_max * N_BINS).astype(np.int64), N_BINS - 1)


def select(proteins: np.ndarray, values: np.ndarray, n_total: int, sizes: ExampleSizes,
           rng: np.random.Generator) -> Selection:
    """Pick examples and held-out proteins for one feature.

    `proteins` (ascending ids) and `values` (> 0) are the feature's non-zero per-protein maxima over
    `n_total` indexed proteins.
    """
    proteins = np.asarray(proteins, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    feature_max = float(values.max()) if len(values) else 0.0
    bins = bins_of(values, feature_max)
    taken = np.zeros(len(proteins), dtype=bool)  # over the firing proteins

    chosen: list[tuple[np.ndarray, int]] = []  # (positions into proteins, kind)
    top = np.lexsort((proteins, -values))[: sizes.n_top]
    taken[top] = True
    chosen.append((top, KIND_TOP))
    for b in range(N_BINS - 1, -1, -1):
        pool = np.flatnonzero((bins == b) & ~taken)
        pick = _draw(rng, pool, sizes.per_bin)
        taken[pick] = True
        chosen.append((pick, KIND_QUANTILE))

    example_ids = [proteins[p] for p, _ in chosen]
    example_kinds = [np.full(len(p), k, dtype=np.int8) for p, k in chosen]
    example_values = [values[p] for p, _ in chosen]
    silent = _draw_silent(rng, proteins, n_total, sizes.n_silent, exclude=np.empty(0, dtype=np.int64))
    example_ids.append(silent)
    example_kinds.append(np.full(len(silent), KIND_SILENT, dtype=np.int8))
    example_values.append(np.zeros(len(silent), dtype=np.float32))

    # held-out: the same strata, proportionally, from what the examples left; test half first
    strata = [SILENT, *range(N_BINS)]
    example_count = {s: int((bins[taken] == s).sum()) for s in range(N_BINS)}
    example_count[SILENT] = len(silent)
    n_silent_free = n_total - len(proteins) - len(silent)
    halves = []
    excluded_silent = silent
    for n_half, kind in ((sizes.n_heldout, KIND_HELDOUT), (sizes.n_validation, KIND_VALIDATION)):
        available = {s: np.flatnonzero((bins == s) & ~taken) for s in range(N_BINS)}
        targets = _allocate(n_half, example_count,
                            {**{s: len(a) for s, a in available.items()}, SILENT: n_silent_free}, strata)
        held_ids, held_values = [], []
        for s in range(N_BINS):
            pick = _draw(rng, available[s], targets[s])
            taken[pick] = True
            held_ids.append(proteins[pick])
            held_values.append(values[pick])
        held_silent = _draw_silent(rng, proteins, n_total, targets[SILENT], exclude=excluded_silent)
        excluded_silent = np.concatenate([excluded_silent, held_silent])
        n_silent_free -= len(held_silent)
        held_ids.append(held_silent)
        held_values.append(np.zeros(len(held_silent), dtype=np.float32))
        held = np.concatenate(held_ids)
        held_vals = np.concatenate(held_values)
        order = np.lexsort((held, -held_vals))  # strongest first, a fixed order for prompts to shuffle
        halves.append((held[order], np.full(len(held), kind, dtype=np.int8), held_vals[order]))

    return Selection(
        proteins=np.concatenate([*example_ids, *(h[0] for h in halves)]).astype(np.int64),
        kinds=np.concatenate([*example_kinds, *(h[1] for h in halves)]),
        values=np.concatenate([*example_values, *(h[2] for h in halves)]).astype(np.float32),
    )


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or len(pool) == 0:
        return np.empty(0, dtype=np.int64)
    if k >= len(pool):
        return np.asarray(pool, dtype=np.int64)
    return np.sort(rng.choice(pool, size=k, replace=False)).astype(np.int64)


def _draw_silent(rng: np.random.Generator, active: np.ndarray, n_total: int, k: int,
                 exclude: np.ndarray) -> np.ndarray:
    """k distinct protein ids in [0, n_total) outside `active` (sorted) and `exclude`."""
    n_free = n_total - len(active) - len(exclude)
    if k <= 0 or n_free <= 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, n_free)
    if n_free < 8 * k or n_total <= 4096:
        mask = np.ones(n_total, dtype=bool)
        mask[active] = False
        mask[exclude] = False
        return _draw(rng, np.flatnonzero(mask), k)
    # rejection sampling: most proteins are free, so a few rounds find k without an O(N) mask
    found: list[int] = []
    seen = set(exclude.tolist())
    while len(found) < k:
        candidates = rng.integers(0, n_total, size=4 * k)
        hit = np.searchsorted(active, candidates)
        is_active = (hit < len(active)) & (active[np.minimum(hit, len(active) - 1)] == candidates)
        for c in candidates[~is_active].tolist():
            if c not in seen:
                seen.add(c)
                found.append(c)
                if len(found) == k:
                    break
    return np.sort(np.asarray(found, dtype=np.int64))


def _allocate(n: int, example_count: dict[int, int], available: dict[int, int],
              strata: list[int]) -> dict[int, int]:
    """How many held-out proteins to take per stratum.

    One per stratum the examples occupy first (largest example count first), the rest in
    proportion to the example counts (largest remainder); a stratum short of proteins passes its
    shortfall to its nearest neighbours (higher first).
    """
    targets = dict.fromkeys(strata, 0)
    occupied = sorted((s for s in strata if example_count.get(s, 0) > 0),
                      key=lambda s: (-example_count[s], -s))
    total = sum(example_count.get(s, 0) for s in strata)
    if n <= 0 or total == 0:
        return targets
    for s in occupied[:n]:
        targets[s] = 1
    rest = n - sum(targets.values())
    if rest > 0:
        shares = {s: rest * example_count.get(s, 0) / total for s in strata}
        for s in strata:
            targets[s] += int(shares[s])
        leftover = n - sum(targets.values())
        by_remainder = sorted(strata, key=lambda s: (-(shares[s] - int(shares[s])), -s))
        for s in by_remainder[:leftover]:
            targets[s] += 1
    # pass shortfalls on to the nearest strata that still have proteins
    order = {s: i for i, s in enumerate(strata)}
    for s in sorted(strata, key=lambda s: -example_count.get(s, 0)):
        excess = targets[s] - available.get(s, 0)
        if excess <= 0:
            continue
        targets[s] -= excess
        for distance in range(1, len(strata)):
            for neighbour in (order[s] + distance, order[s] - distance):
                if excess and 0 <= neighbour < len(strata):
                    other = strata[neighbour]
                    room = available.get(other, 0) - targets[other]
                    take = min(room, excess)
                    if take > 0:
                        targets[other] += take
                        excess -= take
            if not excess:
                break
    return targets
