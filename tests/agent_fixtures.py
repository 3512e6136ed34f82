"""Features for the agent tests and bench: planted on proteins by a rule, with a validation half.

`plant_rule` fires a feature on the proteins a predicate picks (at the residues it names, with a
random strength) plus weak noise elsewhere; `build_split` chooses examples and two disjoint
held-out halves (test, validation), each matched to the activation distribution with silent
proteins, as the index does. `synthetic_proteins` makes small Swiss-Prot-like proteins (a zinc
finger, a transmembrane helix, keywords, organisms) so unit tests need no data file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from sae.index import ExampleProtein, FeatureExamples, ResidueActivation
from storage.protein import Protein, ProteinFeature
from tests.planted import MAX_ACTIVATION, Profile

Fires = Callable[[Protein], list[int]]  # the residues (1-based) a feature fires on; [] = silent


def plant_rule(
    proteins: Sequence[Protein], fires: Fires, seed: int, noise: float = 0.03
) -> dict[str, Profile]:
    rng = random.Random(seed)
    profiles: dict[str, Profile] = {}
    for protein in proteins:
        spots = [p for p in fires(protein) if 1 <= p <= protein.length]
        if spots:
            peak = MAX_ACTIVATION * rng.uniform(0.35, 1.0)
        elif rng.random() < noise:
            peak = MAX_ACTIVATION * rng.uniform(0.02, 0.12)
            start = rng.randint(1, max(1, protein.length - 5))
            spots = list(range(start, min(protein.length, start + 3) + 1))
        else:
            continue
        values = [peak * rng.uniform(0.5, 1.0) for _ in spots]
        values[rng.randrange(len(values))] = peak
        profiles[protein.accession] = Profile(
            peak, tuple(ResidueActivation(position=p, value=v) for p, v in zip(spots, values, strict=True))
        )
    return profiles


def shuffled(proteins: Sequence[Protein], profiles: dict[str, Profile], seed: int) -> dict[str, Profile]:
    rng = random.Random(seed)
    targets = rng.sample(list(proteins), len(profiles))
    out = {}
    for target, profile in zip(targets, profiles.values(), strict=True):
        start = rng.randint(1, max(1, target.length - 5))
        out[target.accession] = Profile(
            profile.peak,
            tuple(
                ResidueActivation(position=p, value=profile.peak)
                for p in range(start, min(target.length, start + 3) + 1)
            ),
        )
    return out


def build_split(
    proteins: Sequence[Protein],
    profiles: dict[str, Profile],
    *,
    sae_id: str,
    feature: int,
    seed: int,
    n_top: int = 10,
    per_bin: int = 2,
    n_silent: int = 10,
    n_half: int = 24,
) -> FeatureExamples:
    rng = random.Random(seed)
    by_accession = {p.accession: p for p in proteins}
    peak = max(p.peak for p in profiles.values())
    firing = sorted(profiles, key=lambda a: (-profiles[a].peak, a))
    silent = sorted(p.accession for p in proteins if p.accession not in profiles)
    rng.shuffle(silent)
    pool = firing[n_top:]
    test_f, val_f, rest = pool[0::3][: n_half // 2], pool[1::3][: n_half // 2], pool[2::3]
    test_s = silent[: n_half - len(test_f)]
    val_s = silent[len(test_s) : len(test_s) + n_half - len(val_f)]
    used = len(test_s) + len(val_s)
    test, val = test_f + test_s, val_f + val_s
    rng.shuffle(test)
    rng.shuffle(val)
    chosen: list[tuple[str, str]] = [(a, "top") for a in firing[:n_top]]
    for low in [i / 10 for i in range(10)]:
        in_bin = [a for a in rest if low < profiles[a].peak / peak <= low + 0.1]
        chosen += [(a, "quantile") for a in rng.sample(in_bin, min(per_bin, len(in_bin)))]
    chosen += [(a, "silent") for a in silent[used : used + n_silent]]

    def value(a: str) -> float:
        return profiles[a].peak if a in profiles else 0.0

    def firing_of(a: str) -> tuple[ResidueActivation, ...]:
        return profiles[a].firing if a in profiles else ()

    return FeatureExamples(
        sae_id=sae_id,
        feature=feature,
        max_activation=peak,
        frac_proteins=len(profiles) / len(proteins),
        examples=tuple(
            ExampleProtein(
                protein=by_accession[a],
                kind=k,
                max_activation=value(a),
                normalized=value(a) / peak,
                firing=firing_of(a),
            )
            for a, k in chosen
        ),
        heldout=tuple(by_accession[a] for a in test),
        heldout_actuals=tuple(value(a) for a in test),
        heldout_normalized=tuple(value(a) / peak for a in test),
        heldout_firing=tuple(firing_of(a) for a in test),
        validation=tuple(by_accession[a] for a in val),
        validation_actuals=tuple(value(a) for a in val),
        validation_normalized=tuple(value(a) / peak for a in val),
        validation_firing=tuple(firing_of(a) for a in val),
        has_validation=True,
    )


# --- synthetic proteins ----------------------------------------------------------------------------------
ORGANISMS = ("Homo sapiens (Human)", "Mus musculus (Mouse)", "Saccharomyces cerevisiae (Baker's yeast)")


def synthetic_proteins(n: int = 240, seed: int = 0) -> tuple[Protein, ...]:
    """Proteins of length 120: a third carry a C2H2 zinc finger, a third a transmembrane helix, some
    both; keywords Nucleus / Membrane / Kinase at random; three organisms."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        features, keywords = [], []
        if rng.random() < 0.35:
            features.append(ProteinFeature(type="Zinc finger", start=20, end=42, description="C2H2-type 1"))
            keywords += ["Zinc", "Metal-binding"]
        if rng.random() < 0.35:
            features.append(ProteinFeature(type="Transmembrane", start=60, end=80, description="Helical"))
            keywords.append("Transmembrane helix")
        if rng.random() < 0.4:
            keywords.append("Nucleus")
        if rng.random() < 0.2:
            keywords.append("Kinase")
        sequence = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(120))
        out.append(
            Protein(
                accession=f"S{i:05d}",
                entry_name=f"SYN{i}_HUMAN",
                protein_name=f"Synthetic protein {i}",
                organism=ORGANISMS[i % 3],
                length=120,
                sequence=sequence,
                keywords=tuple(keywords),
                features=tuple(features),
            )
        )
    return tuple(out)


def region(type_: str) -> Fires:
    def fires(protein: Protein) -> list[int]:
        return [
            p
            for f in protein.features
            if f.type == type_ and f.start
            for p in range(f.start, (f.end or 0) + 1)
        ]

    return fires


def only_if(fires: Fires, keep: Callable[[Protein], bool]) -> Fires:
    return lambda protein: fires(protein) if keep(protein) else []


def either(a: Fires, b: Fires) -> Fires:
    return lambda protein: sorted(set(a(protein)) | set(b(protein)))


def synthetic_feature(kind: str = "zinc_nucleus", feature: int = 0, seed: int = 0) -> FeatureExamples:
    """'zinc': fires on zinc fingers; 'zinc_nucleus': only in nuclear proteins; 'shuffled': no concept."""
    proteins = synthetic_proteins(seed=seed)
    zinc = region("Zinc finger")
    fires = {"zinc": zinc, "zinc_nucleus": only_if(zinc, lambda p: "Nucleus" in p.keywords)}.get(kind, zinc)
    profiles = plant_rule(proteins, fires, seed=seed)
    if kind == "shuffled":
        profiles = shuffled(proteins, profiles, seed=seed + 1)
    return build_split(proteins, profiles, sae_id="agent", feature=feature, seed=seed)
