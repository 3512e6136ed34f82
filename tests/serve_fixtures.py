"""A small live workspace for the serve tests and bench/serve.py: a tiny random ESM-2 (the workspace's
model), an SAE over its layer 1 whose features each fire on about a tenth of the residues, real
Swiss-Prot proteins with an activation index built by `build_index`, labels (one carrying a script
payload) and suggestions (one with a payload concept).

Labels and suggestions are written with the storage writers (`save_label`, `write_suggestions`), as a
labeling job and `plmlabel suggest` write them.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch

from sae.index import build_index
from sae.model import create_sae, install_and_record
from sae.plm import embed_sequences, load_esm
from storage.labels import LabelRecord, PredictionRow, save_label
from storage.suggestions import Evidence, Suggestion, write_suggestions
from storage.workspace import Config, IndexConfig, PlmConfig, Workspace
from tests.esm_fixtures import tiny_checkpoint

SAE_ID = "tiny"
D_SAE = 32
PAYLOAD = "<img src=x onerror=\"document.title='pwned'\" id=\"pwned-img\"> kinase"
PAYLOAD_DESCRIPTION = "</script><script>document.title='pwned'</script><b id=\"pwned-b\">ATP</b> & done"
LABELS = {  # feature: (label, description, concepts, pearson, validated)
    1: ("Zinc finger cysteine", "Fires on cysteines of C2H2 zinc fingers that bind zinc.", ["Zinc finger"],
        0.81, True),
    2: ("Transmembrane helix", "Hydrophobic helices spanning the membrane.", ["Transmembrane"], 0.66, True),
    4: ("Signal peptide", "N-terminal signal peptides of secreted proteins.", [], 0.31, False),
    5: (PAYLOAD, PAYLOAD_DESCRIPTION, ["<i>kinase</i>"], 0.55, True),
    9: ("Glycine-rich loop", "Glycine-rich loops near nucleotide-binding sites.", ["Nucleotide binding"],
        0.58, True),
}
PAYLOAD_FEATURE = 5


def sample_sequences(swissprot_dir: Path, n: int = 24, max_length: int = 300):
    """Real Swiss-Prot proteins (30 to `max_length` residues) from the shared sample, in file order."""
    from storage.protein import Protein
    from storage.swissprot import parse_file

    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for protein in parse_file(swissprot_dir / "sprot_sample.dat.gz"):
            if isinstance(protein, Protein) and 30 <= protein.length <= max_length:
                found.append(protein)
                if len(found) == n:
                    break
    return found


def sparse_sae(plm, layer: int, sequences: list[str], model_key: str, seed: int = 0, d_sae: int = D_SAE):
    """A ReLU SAE whose every feature fires on roughly the top tenth of these residues."""
    torch.manual_seed(seed)
    sae = create_sae("relu", plm.embed_dim, d_sae, plm_model=model_key, layer=layer)
    embeddings = np.concatenate([e for _, e in embed_sequences(plm, [(str(i), s) for i, s in
                                                                     enumerate(sequences)], layer)])
    with torch.no_grad():
        sae.b_enc.zero_()
        pre = sae.pre_activation(torch.from_numpy(embeddings)).numpy()
        sae.b_enc.copy_(torch.from_numpy(-np.quantile(pre, 0.9, axis=0).astype(np.float32)))
    return sae.eval()


def build_live_workspace(root: Path, swissprot_dir: Path, *, n_proteins: int = 24, d_sae: int = D_SAE,
                         **shape: int) -> Workspace:
    """The workspace; `shape` (num_layers, embed_dim, attention_heads) overrides the tiny ESM-2's."""
    from storage.proteins import import_proteins

    ws = Workspace(root)
    checkpoint = tiny_checkpoint(root / "models", **shape)
    config = Config(plm=PlmConfig(model=str(checkpoint), layer=1, device="cpu"),
                    index=IndexConfig(n_top=4, per_bin=1, n_silent=2, n_heldout=4, n_validation=0))
    ws.init(config)
    proteins = sample_sequences(swissprot_dir, n_proteins)
    with ws.db() as db:
        import_proteins(db, proteins, source_format="swissprot")
    plm = load_esm(str(checkpoint), device="cpu")
    sae = sparse_sae(plm, 1, [p.sequence for p in proteins], str(checkpoint), d_sae=d_sae)
    install_and_record(ws, SAE_ID, sae, source="trained")
    build_index(ws, SAE_ID, device="cpu")
    accessions = [p.accession for p in proteins]
    with ws.db() as db:
        for feature, (label, description, concepts, pearson, validated) in LABELS.items():
            predictions = [PredictionRow(accession=a, predicted=float(i % 10), actual=(i % 10) / 10,
                                         actual_raw=(i % 10) / 5) for i, a in enumerate(accessions[:8])]
            save_label(db, LabelRecord(sae_id=SAE_ID, feature=feature, label=label, description=description,
                                       concepts=concepts, confidence=0.7, pearson=pearson, spearman=pearson,
                                       n_heldout=8, validated=validated, backend="baseline"), predictions)
        write_suggestions(db, SAE_ID, [
            Suggestion(sae_id=SAE_ID, feature=1, accession=accessions[0], concept="Zinc finger:C2H2-type",
                       kind="residue", residues=((3, 9),), activation=1.2, normalized=0.8,
                       evidence=Evidence(precision=0.9, recall=0.7, f1=0.79, label=LABELS[1][0],
                                         label_score=0.81), rank_score=0.71),
            Suggestion(sae_id=SAE_ID, feature=PAYLOAD_FEATURE, accession=accessions[1], concept=PAYLOAD,
                       kind="region", residues=(), activation=0.9, normalized=0.5,
                       evidence=Evidence(f1=0.6, label=PAYLOAD, label_score=0.55), rank_score=0.3),
        ])
    return ws


@cache
def shared_live_workspace(swissprot_dir: Path) -> Workspace:
    """One live workspace per test session (building it takes seconds); tests that write copy it."""
    folder = Path(tempfile.mkdtemp(prefix="plmlabel-serve-"))
    atexit.register(shutil.rmtree, folder, True)
    return build_live_workspace(folder / "ws", swissprot_dir)


def copy_workspace(workspace: Workspace, target: Path) -> Workspace:
    shutil.copytree(workspace.root, target)
    return Workspace(target)


@contextmanager
def running_server(app) -> Iterator[str]:
    """uvicorn serving `app` on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
