"""Shared by the suggestion tests and bench/suggest.py: planted features whose annotation was hidden.

Real Swiss-Prot proteins; each planted concept i gets an embedding dimension 20 + i that is on where
the concept is annotated (tests/planted.py decides the residues), with a per-protein strength, and an
SAE feature i that reads it. Then, *before import*, the concept's annotation is removed from a fraction
of its carriers: the embeddings still carry the signal (the protein still has the concept), the
database no longer says so. Those (protein, concept) pairs are the truth a suggestion should recover.

Realism, so precision and recall are not trivially 1: a carrier is silent with probability `miss`
(nothing can recover it), a non-carrier fires strongly on a random stretch with probability
`false_rate` (what a suggestion cannot tell from a missing annotation) and weakly with probability 0.03.

    dims 0-19        one-hot amino acid
    dims 20..20+n-1  planted concepts
    last 4 dims      small noise
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from sae.concept_vocab import AMINO_ACIDS
from sae.embeddings import EmbeddingStore, store_path
from sae.model import create_sae
from storage.protein import Protein
from storage.workspace import Workspace
from tests.planted import PLANTED, Planted

N_NOISE = 4
SAE_ID = "hidden"


def planted_concept(name: str) -> Planted:
    return next(p for p in PLANTED if p.name == name)


@dataclass
class HiddenSet:
    """What was planted and hidden: feature i is concepts[i]."""

    concepts: list[Planted]
    hidden: set[tuple[str, int]] = field(default_factory=set)  # (accession, feature)
    carriers: dict[int, set[str]] = field(default_factory=dict)  # annotated before hiding
    silent: set[tuple[str, int]] = field(default_factory=set)  # hidden carriers the feature misses
    false_firing: set[tuple[str, int]] = field(default_factory=set)  # non-carriers firing strongly

    def ceiling(self, feature: int | None = None) -> dict[str, float]:
        """What a perfect detector of firing could reach: silent carriers lost, false firing kept."""
        def keep(pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
            return {p for p in pairs if feature is None or p[1] == feature}

        hidden, silent, false = keep(self.hidden), keep(self.silent), keep(self.false_firing)
        found = len(hidden) - len(silent)
        return {"precision": found / (found + len(false)) if found + len(false) else 0.0,
                "recall": found / len(hidden) if hidden else 0.0}

    def score(self, suggestions) -> dict[str, float]:
        """Precision and recall of (accession, feature) suggestions against the hidden pairs."""
        suggested = {(s.accession, s.feature) for s in suggestions if s.feature < len(self.concepts)}
        hits = suggested & self.hidden
        return {"n_hidden": len(self.hidden), "n_suggested": len(suggested), "n_correct": len(hits),
                "precision": len(hits) / len(suggested) if suggested else 0.0,
                "recall": len(hits) / len(self.hidden) if self.hidden else 0.0}


def _strip(protein: Protein, concept: Planted) -> Protein:
    assert concept.feature is not None
    kept = tuple(f for f in protein.features if not concept.feature(f))
    return protein.model_copy(update={"features": kept})


def _embedding(protein: Protein, fires: list[tuple[int, list[int], float]], rng: np.random.Generator,
               d_in: int) -> np.ndarray:
    x = np.zeros((protein.length, d_in), dtype=np.float32)
    codes = np.array([AMINO_ACIDS.find(a) for a in protein.sequence])
    known = codes >= 0
    x[np.flatnonzero(known), codes[known]] = 1.0
    for dim, positions, strength in fires:
        spots = np.asarray([p - 1 for p in positions if 1 <= p <= protein.length], dtype=np.int64)
        x[spots, dim] = strength * rng.uniform(0.6, 1.0, size=len(spots))
    x[:, d_in - N_NOISE:] = rng.normal(scale=0.05, size=(protein.length, N_NOISE))
    return x


def planted_sae(n_concepts: int, d_in: int, n_random: int = 8, seed: int = 0):
    """Feature i reads concept dim 20 + i; `n_random` more features read random amino-acid mixtures."""
    torch.manual_seed(seed)
    sae = create_sae("relu", d_in, n_concepts + n_random)
    with torch.no_grad():
        w = torch.zeros(d_in, n_concepts + n_random)
        w[:20, n_concepts:] = torch.randn(20, n_random) * 0.5
        for i in range(n_concepts):
            w[20 + i, i] = 1.0
        b = torch.full((n_concepts + n_random,), -0.6)
        b[:n_concepts] = -0.01
        sae.W_enc.copy_(w)
        sae.b_enc.copy_(b)
        sae.b_dec.zero_()
    return sae


def build_hidden_workspace(workspace: Workspace, proteins: tuple[Protein, ...] | list[Protein],
                           concept_names: list[str], *, hide_fraction: float = 0.25, seed: int = 0,
                           miss: float = 0.1, false_rate: float = 0.01, per_shard: int = 100) -> HiddenSet:
    """Plant, hide, import, embed, register, index and run `concepts` (stored); returns the truth."""
    from sae.concepts import evaluate_sae_concepts, store_concepts
    from sae.index import build_index
    from tests.index_fixtures import import_sample, register_sae

    concepts = [planted_concept(name) for name in concept_names]
    d_in = 20 + len(concepts) + N_NOISE
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    truth = HiddenSet(concepts)
    stored: list[Protein] = []
    items: list[tuple[str, np.ndarray]] = []
    for protein in proteins:
        fires: list[tuple[int, list[int], float]] = []
        kept = protein
        for i, concept in enumerate(concepts):
            if concept.carries(protein):
                truth.carriers.setdefault(i, set()).add(protein.accession)
                hide = rng.random() < hide_fraction
                if hide:
                    kept = _strip(kept, concept)
                if rng.random() >= miss:
                    fires.append((20 + i, concept.positions(protein, rng), rng.uniform(0.4, 1.0)))
                    if hide:
                        truth.hidden.add((protein.accession, i))
                elif hide:
                    truth.hidden.add((protein.accession, i))  # hidden but silent: unrecoverable
                    truth.silent.add((protein.accession, i))
            else:
                draw = rng.random()
                if draw < false_rate:
                    truth.false_firing.add((protein.accession, i))
                    start = rng.randint(1, max(1, protein.length - 8))
                    fires.append((20 + i, list(range(start, start + 8)), rng.uniform(0.4, 1.0)))
                elif draw < false_rate + 0.03:
                    start = rng.randint(1, max(1, protein.length - 4))
                    fires.append((20 + i, list(range(start, start + 4)), rng.uniform(0.02, 0.12)))
        stored.append(kept)
        items.append((protein.accession, _embedding(protein, fires, nrng, d_in)))
    import_sample(workspace, stored)
    config = workspace.load_config().plm
    store = EmbeddingStore.create(store_path(workspace.embeddings_dir, config.model, config.layer),
                                  model=config.model, layer=config.layer, d_model=d_in)
    for number, start in enumerate(range(0, len(items), per_shard)):
        store.write_shard(number, items[start:start + per_shard])
    register_sae(workspace, planted_sae(len(concepts), d_in, seed=seed), SAE_ID)
    build_index(workspace, SAE_ID, seed=0)
    report = evaluate_sae_concepts(workspace, SAE_ID, min_proteins=5, seed=seed)
    with workspace.db() as db:
        store_concepts(db, report)
    return truth
