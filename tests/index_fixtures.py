"""Shared by the index and concept tests: real Swiss-Prot proteins, planted embeddings, a planted SAE.

Embeddings are built from each protein's own sequence and annotations, so an SAE feature that reads
one embedding dimension fires exactly where a concept is:

    dims 0-19   one-hot amino acid
    dim 20      1 inside a transmembrane region
    dim 21      1 inside a zinc finger
    dims 22-31  small noise

SAE (ReLU, 24 features): feature 0 reads dim 20 (transmembrane), feature 1 dim 21 (zinc finger),
feature 2 the cysteine dim, features 3-23 random directions with a bias that keeps them sparse.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch

from sae.concept_vocab import AMINO_ACIDS
from sae.embeddings import EmbeddingStore, store_path
from sae.model import create_sae, install_sae, weights_hash
from storage.protein import Protein
from storage.workspace import Workspace

D_IN, D_SAE = 32, 24
TM_DIM, ZF_DIM = 20, 21
TM_FEATURE, ZF_FEATURE, CYS_FEATURE = 0, 1, 2
SAE_ID = "planted"
MAX_LENGTH = 900


@cache
def sample_proteins(swissprot_dir: Path, n_other: int = 60) -> tuple[Protein, ...]:
    """Every zinc-finger and transmembrane protein of the sample (up to MAX_LENGTH), plus n_other others."""
    from storage.swissprot import parse_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = parse_file(swissprot_dir / "sprot_sample.dat.gz")
        proteins = [p for p in parsed if isinstance(p, Protein) and 30 <= p.length <= MAX_LENGTH]
    types = [{f.type for f in p.features} for p in proteins]
    planted = [p for p, t in zip(proteins, types, strict=True) if {"Zinc finger", "Transmembrane"} & t]
    others = [p for p, t in zip(proteins, types, strict=True) if not {"Zinc finger", "Transmembrane"} & t]
    return tuple(planted + others[:n_other])


def planted_embedding(protein: Protein, rng: np.random.Generator) -> np.ndarray:
    length = protein.length
    x = np.zeros((length, D_IN), dtype=np.float32)
    codes = np.array([AMINO_ACIDS.find(a) for a in protein.sequence])
    known = codes >= 0
    x[np.flatnonzero(known), codes[known]] = 1.0
    for feature in protein.features:
        if feature.start is None or feature.end is None:
            continue
        dim = {"Transmembrane": TM_DIM, "Zinc finger": ZF_DIM}.get(feature.type)
        if dim is not None:
            x[feature.start - 1:feature.end, dim] = 1.0
    x[:, 22:] = rng.normal(scale=0.05, size=(length, D_IN - 22))
    return x


def write_embeddings(workspace: Workspace, proteins: tuple[Protein, ...] | list[Protein], *, d_in: int = D_IN,
                     per_shard: int = 40, seed: int = 0, repeat: int = 1) -> EmbeddingStore:
    config = workspace.load_config().plm
    store = EmbeddingStore.create(store_path(workspace.embeddings_dir, config.model, config.layer),
                                  model=config.model, layer=config.layer, d_model=d_in)
    rng = np.random.default_rng(seed)
    items = []
    for copy in range(repeat):
        for protein in proteins:
            embedding = planted_embedding(protein, rng)
            if d_in != D_IN:
                embedding = np.resize(embedding, (len(embedding), d_in))
            items.append((protein.accession if copy == 0 else f"{protein.accession}-{copy}", embedding))
    for number, start in enumerate(range(0, len(items), per_shard)):
        store.write_shard(number, items[start:start + per_shard])
    return store


def planted_sae(seed: int = 0):
    torch.manual_seed(seed)
    sae = create_sae("relu", D_IN, D_SAE)
    with torch.no_grad():
        w = torch.randn(D_IN, D_SAE) * 0.5
        w[:, :3] = 0.0
        w[[TM_DIM, ZF_DIM], 3:] = 0.0  # only the planted features see the planted dimensions
        w[TM_DIM, TM_FEATURE] = 1.0
        w[ZF_DIM, ZF_FEATURE] = 1.0
        w[AMINO_ACIDS.index("C"), CYS_FEATURE] = 1.0
        b = torch.full((D_SAE,), -0.6)
        b[:3] = -0.5
        sae.W_enc.copy_(w)
        sae.b_enc.copy_(b)
        sae.b_dec.zero_()
    return sae


def register_sae(workspace: Workspace, sae, sae_id: str = SAE_ID) -> Path:
    from storage.saes import SaeRecord, record_sae

    config = workspace.load_config().plm
    directory = install_sae(sae, workspace.sae_dir(sae_id))
    with workspace.db() as db:
        record_sae(db, SaeRecord(sae_id=sae_id, architecture=sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae,
                                 plm_model=config.model, layer=config.layer,
                                 path=str(directory.relative_to(workspace.root)),
                                 weights_hash=weights_hash(directory), source="trained"))
    return directory


def import_sample(workspace: Workspace, proteins: tuple[Protein, ...] | list[Protein]) -> None:
    from storage.proteins import import_proteins

    with workspace.db() as db:
        import_proteins(db, proteins)


def planted_workspace(workspace: Workspace, swissprot_dir: Path) -> tuple[Protein, ...]:
    """Proteins imported, embeddings written, the planted SAE registered (not indexed)."""
    proteins = sample_proteins(swissprot_dir)
    import_sample(workspace, proteins)
    write_embeddings(workspace, proteins)
    register_sae(workspace, planted_sae())
    return proteins


@cache
def _template(swissprot_dir: Path, indexed: bool) -> Path:
    """A planted workspace built once per test process (indexed with seed 0 when asked)."""
    from sae.index import build_index

    root = Path(tempfile.mkdtemp(prefix="plmlabel-index-template-"))
    atexit.register(shutil.rmtree, root, True)
    workspace = Workspace(root / "ws")
    workspace.init()
    planted_workspace(workspace, swissprot_dir)
    if indexed:
        build_index(workspace, SAE_ID, seed=0)
    return workspace.root


def shared_swissprot() -> Path:
    """The shared Swiss-Prot folder (for module-scoped fixtures; skips when it is absent)."""
    import pytest

    from tests.conftest import SHARED_SWISSPROT

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    return SHARED_SWISSPROT


def copy_template(swissprot_dir: Path, target: Path, *, indexed: bool = True) -> Workspace:
    """A private copy of the planted workspace (cheap: the build happens once)."""
    shutil.copytree(_template(swissprot_dir, indexed), target)
    return Workspace(target)
