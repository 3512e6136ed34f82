"""Planted features on real Swiss-Prot proteins, for the labeling tests.

A planted feature fires on the proteins that carry one Swiss-Prot concept (at the residues the
concept annotates, or a random stretch for a keyword) with a random strength, and on a few other
proteins weakly (noise); everywhere else it is silent. Its FeatureExamples are chosen the way the
index chooses them (top, per-bin quantiles, silent, and a disjoint held-out set with firing and
silent proteins). A shuffled feature permutes the per-protein activations across proteins, so no
concept explains it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sae.index import ExampleProtein, FeatureExamples, ResidueActivation
from storage.protein import Protein, ProteinFeature

SAMPLE = "sprot_sample.dat.gz"
MAX_ACTIVATION = 6.0


@cache
def load_proteins(swissprot_dir: Path) -> tuple[Protein, ...]:
    from storage.swissprot import parse_file

    items = parse_file(Path(swissprot_dir) / SAMPLE, on_warning=lambda _: None)
    return tuple(p for p in items if isinstance(p, Protein))


@cache
def _subtype(text: str | None) -> str:
    """'Zinc finger C2H2-type 3; degenerate' -> 'c2h2-type' (numbered instances pool)."""
    return re.sub(r"\s+\d+$", "", (text or "").split(";")[0].strip()).lower()


def _has_feature(type_: str, subtype: str | None = None) -> Callable[[ProteinFeature], bool]:
    """Features of a type whose ligand or description is `subtype` (any, when None)."""

    def match(f: ProteinFeature) -> bool:
        if f.type != type_:
            return False
        return subtype is None or subtype.lower() in (_subtype(f.ligand), _subtype(f.description))

    return match


@dataclass(frozen=True)
class Planted:
    name: str  # the concept, as a reader would name it
    key: str  # what a correct label must mention (lowercase)
    feature: Callable[[ProteinFeature], bool] | None = None
    keyword: str | None = None

    def carries(self, protein: Protein) -> bool:
        if self.keyword is not None:
            return self.keyword in protein.keywords
        assert self.feature is not None
        return any(self.feature(f) and f.start is not None for f in protein.features)

    def positions(self, protein: Protein, rng: random.Random) -> list[int]:
        if self.keyword is not None:
            start = rng.randint(1, max(1, protein.length - 12))
            return list(range(start, min(protein.length, start + 10) + 1))
        assert self.feature is not None
        spots: set[int] = set()
        for f in protein.features:
            if self.feature(f) and f.start is not None and f.end is not None:
                if f.type == "Disulfide bond":
                    spots.update((f.start, f.end))
                else:
                    spots.update(range(f.start, f.end + 1))
        return sorted(p for p in spots if 1 <= p <= protein.length)


PLANTED: tuple[Planted, ...] = (
    Planted("Zinc finger", "zinc finger", _has_feature("Zinc finger")),
    Planted("Transmembrane", "transmembrane", _has_feature("Transmembrane")),
    Planted("Disulfide bond", "disulfide", _has_feature("Disulfide bond")),
    Planted("Protein kinase domain", "protein kinase", _has_feature("Domain", "Protein kinase")),
    Planted("ATP binding site", "atp", _has_feature("Binding site", "ATP")),
    Planted("Zn(2+) binding site", "zn(2+)", _has_feature("Binding site", "Zn(2+)")),
    Planted("Signal peptide", "signal", _has_feature("Signal")),
    Planted("N-linked glycosylation", "n-linked",
            _has_feature("Glycosylation", "N-linked (GlcNAc...) asparagine")),
    Planted("Mitochondrial transit peptide", "transit peptide", _has_feature("Transit peptide")),
    Planted("Coiled coil", "coiled coil", _has_feature("Coiled coil")),
    Planted("Ca(2+) binding site", "ca(2+)", _has_feature("Binding site", "Ca(2+)")),
    Planted("DNA-binding region", "dna binding", _has_feature("DNA binding")),
    Planted("Lipidation", "lipidation", _has_feature("Lipidation")),
    Planted("Mg(2+) binding site", "mg(2+)", _has_feature("Binding site", "Mg(2+)")),
    Planted("Nucleophile active site", "nucleophile", _has_feature("Active site", "Nucleophile")),
    Planted("Nuclear localization signal", "nuclear localization",
            _has_feature("Motif", "Nuclear localization signal")),
    Planted("Propeptide", "propeptide", _has_feature("Propeptide")),
    Planted("Extracellular topological domain", "extracellular",
            _has_feature("Topological domain", "Extracellular")),
    Planted("Kinase (keyword)", "kinase", keyword="Kinase"),
    Planted("Chaperone (keyword)", "chaperone", keyword="Chaperone"),
)


@dataclass(frozen=True)
class Profile:
    """A feature's activation on one protein: its max and its firing residues."""

    peak: float
    firing: tuple[ResidueActivation, ...]


def plant(proteins: tuple[Protein, ...], concept: Planted, seed: int) -> dict[str, Profile]:
    rng = random.Random(seed)
    profiles: dict[str, Profile] = {}
    for protein in proteins:
        if concept.carries(protein):
            peak = MAX_ACTIVATION * rng.uniform(0.35, 1.0)
            spots = concept.positions(protein, rng)
        elif rng.random() < 0.03:  # noise: weak firing on an unrelated protein
            peak = MAX_ACTIVATION * rng.uniform(0.02, 0.12)
            start = rng.randint(1, max(1, protein.length - 5))
            spots = list(range(start, min(protein.length, start + 3) + 1))
        else:
            continue
        if not spots:
            continue
        values = [peak * rng.uniform(0.5, 1.0) for _ in spots]
        values[rng.randrange(len(values))] = peak
        profiles[protein.accession] = Profile(peak, tuple(
            ResidueActivation(position=p, value=v) for p, v in zip(spots, values, strict=True)))
    return profiles


def shuffle(proteins: tuple[Protein, ...], profiles: dict[str, Profile], seed: int) -> dict[str, Profile]:
    """The same activation values, dealt to random proteins (at random residues)."""
    rng = random.Random(seed)
    targets = rng.sample(list(proteins), len(profiles))
    out: dict[str, Profile] = {}
    for target, profile in zip(targets, profiles.values(), strict=True):
        start = rng.randint(1, max(1, target.length - 5))
        spots = range(start, min(target.length, start + 3) + 1)
        out[target.accession] = Profile(profile.peak, tuple(
            ResidueActivation(position=p, value=profile.peak) for p in spots))
    return out


def build_examples(
    proteins: tuple[Protein, ...], profiles: dict[str, Profile], *, sae_id: str, feature: int, seed: int,
    n_top: int = 10, per_bin: int = 2, n_silent: int = 10, n_heldout: int = 24,
) -> FeatureExamples:
    """Examples and a disjoint held-out set, chosen as the index does."""
    rng = random.Random(seed)
    by_accession = {p.accession: p for p in proteins}
    peak = max(p.peak for p in profiles.values())
    firing = sorted(profiles, key=lambda a: -profiles[a].peak)
    silent = [p.accession for p in proteins if p.accession not in profiles]
    rng.shuffle(silent)
    # Held-out first (so it is matched to the firing distribution): every other firing protein past the top.
    pool = firing[n_top:]
    heldout_firing = pool[::2][: n_heldout // 2]
    heldout_silent = silent[: n_heldout - len(heldout_firing)]
    heldout = heldout_firing + heldout_silent
    rng.shuffle(heldout)
    remaining = [a for a in pool if a not in set(heldout_firing)]
    chosen: list[tuple[str, str]] = [(a, "top") for a in firing[:n_top]]
    for low in [i / 10 for i in range(10)]:
        in_bin = [a for a in remaining if low < profiles[a].peak / peak <= low + 0.1]
        chosen += [(a, "quantile") for a in rng.sample(in_bin, min(per_bin, len(in_bin)))]
    chosen += [(a, "silent") for a in silent[len(heldout_silent): len(heldout_silent) + n_silent]]

    def example(accession: str, kind: str) -> ExampleProtein:
        profile = profiles.get(accession)
        value = profile.peak if profile else 0.0
        return ExampleProtein(protein=by_accession[accession], kind=kind, max_activation=value,
                              normalized=value / peak, firing=profile.firing if profile else ())

    actuals = [profiles[a].peak if a in profiles else 0.0 for a in heldout]
    return FeatureExamples(
        sae_id=sae_id, feature=feature, max_activation=peak, frac_proteins=len(profiles) / len(proteins),
        examples=tuple(example(a, k) for a, k in chosen),
        heldout=tuple(by_accession[a] for a in heldout),
        heldout_actuals=tuple(actuals), heldout_normalized=tuple(v / peak for v in actuals),
        heldout_firing=tuple(profiles[a].firing if a in profiles else () for a in heldout),
    )


@cache
def planted_set(swissprot_dir: Path, sae_id: str = "planted") -> list[tuple[Planted, FeatureExamples]]:
    """Feature i is PLANTED[i] on the real proteins."""
    proteins = load_proteins(swissprot_dir)
    return [(concept, build_examples(proteins, plant(proteins, concept, seed=i), sae_id=sae_id, feature=i,
                                     seed=i))
            for i, concept in enumerate(PLANTED)]


@cache
def shuffled_set(swissprot_dir: Path, sae_id: str = "shuffled") -> list[FeatureExamples]:
    """Feature i has the activations of PLANTED[i], dealt to random proteins."""
    proteins = load_proteins(swissprot_dir)
    return [build_examples(proteins, shuffle(proteins, plant(proteins, concept, seed=i), seed=100 + i),
                           sae_id=sae_id, feature=i, seed=i)
            for i, concept in enumerate(PLANTED)]


def register_sae(db, sae_id: str, features: list[FeatureExamples]) -> None:
    """An SAE row and index statistics for `features`, so jobs can select and store them."""
    from storage.features_store import FeatureStats, write_feature_stats
    from storage.saes import SaeRecord, record_sae

    record_sae(db, SaeRecord(sae_id=sae_id, architecture="relu", d_in=8, d_sae=len(features),
                             path=f"saes/{sae_id}", weights_hash="0" * 64, source="trained"))
    write_feature_stats(db, [FeatureStats(sae_id=sae_id, feature=fe.feature, max_activation=fe.max_activation,
                                          frac_residues=0.01, frac_proteins=fe.frac_proteins)
                             for fe in features])
