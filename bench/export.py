"""Bench: `plmlabel export --format html` at 1k and 10k labeled features: seconds, peak RSS, MB written.

How the workspace is made (synthetic, but every file is in the real layout and the export runs the real
command): the real Swiss-Prot sample (shared/data/swissprot/sprot_sample.dat.gz, ~1,000 proteins with
their annotations) is imported; a TopK SAE with F features (d_in 8, so its weights are small) is
registered; an activation index for it is written directly in the on-disk layout of sae/index_store.py
(each feature fires on a random 1-60% of the proteins with random per-protein maxima; 10 top, 20
quantile, 10 silent, 24 test and 24 validation slots per feature, each firing slot with 3-40 firing
residues); every feature gets an ok label with 24 held-out predictions, per-feature statistics with
three concept associations, and one in fifty features a few suggestions. The export then runs in a
fresh subprocess (`python -m agent.cli export ...` equivalent) whose peak resident memory is read from
the kernel (ru_maxrss of the child).

    python bench/export.py [--features 1000 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPROT = ROOT.parent / "shared" / "data" / "swissprot" / "sprot_sample.dat.gz"
SAE_ID = "bench"
SLOTS = {"top": 10, "quantile": 20, "silent": 10, "heldout": 24, "validation": 24}


def build_workspace(root: Path, n_features: int, seed: int = 0) -> int:
    """The synthetic workspace described above; returns the number of proteins."""
    import torch

    from sae.index_store import KIND_HELDOUT, KIND_QUANTILE, KIND_SILENT, KIND_TOP, KIND_VALIDATION
    from sae.model import create_sae, install_sae, weights_hash
    from storage.features_store import (
        FeatureConcept,
        FeatureStats,
        write_feature_concepts,
        write_feature_stats,
    )
    from storage.protein import Protein
    from storage.proteins import import_proteins
    from storage.saes import SaeRecord, record_sae
    from storage.suggestions import Evidence, Suggestion, write_suggestions
    from storage.swissprot import parse_file
    from storage.workspace import Workspace

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proteins = [p for p in parse_file(SPROT) if isinstance(p, Protein)]
    ws = Workspace(root)
    ws.init()
    with ws.db() as db:
        import_proteins(db, proteins)
    plm = ws.load_config().plm
    torch.manual_seed(seed)
    sae = create_sae("topk", 8, n_features, k=4, plm_model=plm.model, layer=plm.layer)
    directory = install_sae(sae, ws.sae_dir(SAE_ID))
    digest = weights_hash(directory)
    with ws.db() as db:
        record_sae(db, SaeRecord(sae_id=SAE_ID, architecture="topk", d_in=8, d_sae=n_features, k=4,
                                 plm_model=plm.model, layer=plm.layer, path=str(directory),
                                 weights_hash=digest, source="trained"))

    n, lengths = len(proteins), np.array([p.length for p in proteins], dtype=np.int32)
    kinds = ([KIND_TOP] * SLOTS["top"] + [KIND_QUANTILE] * SLOTS["quantile"] + [KIND_SILENT] * SLOTS["silent"]
             + [KIND_HELDOUT] * SLOTS["heldout"] + [KIND_VALIDATION] * SLOTS["validation"])
    n_slots = len(kinds)
    feature_max = np.zeros(n_features, np.float32)
    n_fire_p = np.zeros(n_features, np.int64)
    n_fire_r = np.zeros(n_features, np.int64)
    quantiles = np.zeros((n_features, 11), np.float32)
    indptr, m_protein, m_value, m_residue = [0], [], [], []
    ex_protein = np.full((n_features, n_slots), -1, np.int32)
    ex_kind = np.tile(np.array(kinds, np.int8), (n_features, 1))
    ex_value = np.zeros((n_features, n_slots), np.float32)
    r_indptr, r_pos, r_val = [0], [], []
    stats, concepts = [], []
    for f in range(n_features):
        firing = np.sort(rng.choice(n, size=max(2, int(n * rng.uniform(0.01, 0.6))), replace=False))
        values = rng.gamma(2.0, 1.0, size=firing.size).astype(np.float32)
        top = float(values.max())
        feature_max[f], n_fire_p[f] = top, firing.size
        quantiles[f] = np.quantile(values, np.linspace(0, 1, 11))
        indptr.append(indptr[-1] + firing.size)
        m_protein.append(firing.astype(np.int32))
        m_value.append(values)
        m_residue.append(np.minimum(rng.integers(0, 400, firing.size), lengths[firing] - 1).astype(np.uint16))
        silent_pool = np.setdiff1d(np.arange(n), firing)
        order = firing[np.argsort(-values)]
        chosen = list(order[:SLOTS["top"]]) + list(rng.choice(firing, SLOTS["quantile"]))
        chosen += list(rng.choice(silent_pool, SLOTS["silent"]) if silent_pool.size else [])
        chosen += list(rng.choice(n, SLOTS["heldout"] + SLOTS["validation"], replace=False))
        by_protein = dict(zip(firing.tolist(), values.tolist(), strict=True))
        for s, protein in enumerate(chosen[:n_slots]):
            ex_protein[f, s] = protein
            value = by_protein.get(int(protein), 0.0)
            ex_value[f, s] = value
            count = int(rng.integers(3, 40)) if value > 0 else 0
            positions = np.sort(rng.choice(int(lengths[protein]), size=min(count, int(lengths[protein])),
                                           replace=False)).astype(np.uint16)
            acts = (rng.uniform(0.05, 1.0, positions.size) * value).astype(np.float16)
            n_fire_r[f] += positions.size
            r_pos.append(positions)
            r_val.append(acts)
            r_indptr.append(r_indptr[-1] + positions.size)
        r_indptr.extend([r_indptr[-1]] * (n_slots - len(chosen[:n_slots])))
        stats.append(FeatureStats(
            sae_id=SAE_ID, feature=f, max_activation=top, frac_residues=float(n_fire_r[f]) / lengths.sum(),
            frac_proteins=firing.size / n, quantiles=tuple(float(q) for q in quantiles[f])))
        concepts += [FeatureConcept(feature=f, concept=f"Domain:Synthetic {f % 97}-{i}", rank=i + 1,
                                    threshold=0.3, f1_valid=0.8 - 0.2 * i, f1_test=0.8 - 0.2 * i,
                                    precision_test=0.7, recall_test=0.6, kind="region") for i in range(3)]
    folder = ws.index_path(SAE_ID)
    folder.mkdir(parents=True)
    arrays = {
        "accessions": np.array([p.accession.encode() for p in proteins]), "lengths": lengths,
        "feature_max": feature_max, "n_fire_proteins": n_fire_p, "n_fire_residues": n_fire_r,
        "quantiles": quantiles, "maxima_indptr": np.array(indptr, np.int64),
        "maxima_protein": np.concatenate(m_protein), "maxima_value": np.concatenate(m_value),
        "maxima_residue": np.concatenate(m_residue), "examples_protein": ex_protein,
        "examples_kind": ex_kind, "examples_value": ex_value, "residues_indptr": np.array(r_indptr, np.int64),
        "residues_position": np.concatenate(r_pos), "residues_value": np.concatenate(r_val),
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "manifest.json").write_text(json.dumps({
        "format_version": 2, "sae_id": SAE_ID, "d_sae": n_features, "n_proteins": n,
        "n_residues": int(lengths.sum()), "weights_hash": digest, "index_hash": "bench", "sizes": SLOTS}))

    accessions = [p.accession for p in proteins]
    with ws.db() as db:
        write_feature_stats(db, stats)
        write_feature_concepts(db, SAE_ID, concepts, n_features)
        labels, predictions = [], []
        for f in range(n_features):
            labels.append({"sae_id": SAE_ID, "feature": f, "status": "ok", "label": f"Synthetic label {f}",
                           "description": f"Fires on synthetic motif {f % 211} near <b>binding</b> sites.",
                           "concepts": json.dumps([f"motif {f % 211}"]),
                           "pearson": float(rng.uniform(-.2, .9)),
                           "spearman": float(rng.uniform(-.2, .9)), "n_heldout": 24,
                           "validated": int(rng.uniform() < 0.3), "backend": "baseline",
                           "created_at": "2026-01-01T00:00:00+00:00"})
        db.table("labels").insert_all(labels, batch_size=1000)
        ids = {r["feature"]: r["id"] for r in db.query("select id, feature from labels where sae_id = ?",
                                                         (SAE_ID,))}
        for f in range(n_features):
            for s in range(SLOTS["heldout"]):
                predictions.append({"label_id": ids[f], "accession": accessions[int(ex_protein[f, 40 + s])],
                                    "predicted": float(rng.integers(0, 11)),
                                    "actual": float(ex_value[f, 40 + s] / feature_max[f])})
        db.table("predictions").insert_all(predictions, batch_size=5000)
        suggestions = [Suggestion(sae_id=SAE_ID, feature=f, accession=accessions[int(rng.integers(n))],
                                  concept=f"Domain:Synthetic {f % 97}-{i}", kind="residue",
                                  residues=((5, 20),),
                                  activation=1.0, normalized=0.8, evidence=Evidence(f1=0.8), rank_score=0.5)
                       for f in range(0, n_features, 50) for i in range(3)]
        write_suggestions(db, SAE_ID, suggestions)
    return n


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM resets at exec; ru_maxrss keeps the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: Path, out: Path) -> None:
    """Run the export command in this fresh process and print its figures as JSON."""
    import agent.cli.export_cmd  # noqa: F401  (what the command imports belongs to the baseline)
    import agent.export_bundle  # noqa: F401
    import sae.model  # noqa: F401  (torch: the index check hashes the SAE's weights)
    import storage.viewer_site  # noqa: F401
    from agent.cli import cli

    baseline = _hwm_mb()
    import_cpu = time.process_time()
    started = time.perf_counter()
    cli.main(args=["export", SAE_ID, "--format", "html", "--out", str(out), "--workspace", str(root)],
             prog_name="plmlabel", standalone_mode=False)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - import_cpu
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    index = (out / "index.html").stat().st_size
    peak = _hwm_mb()
    print(json.dumps({"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mb": round(peak),
                      "baseline_rss_mb": round(baseline),
                      "mb_written": round(written / 1e6, 1),
                      "index_html_mb": round(index / 1e6, 2), "files": sum(1 for _ in out.rglob("*.html"))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them")
    parser.add_argument("--child", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out)
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="plmlabel-bench-export-"))
    rows = []
    for n_features in args.features:
        root = base / f"f{n_features}"
        if not (root / "index").exists():
            t = time.perf_counter()
            n_proteins = build_workspace(root, n_features)
            print(f"{n_features} features: workspace ({n_proteins} proteins) made in "
                  f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
        out = base / f"site{n_features}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        done = subprocess.run([sys.executable, __file__, "--child", str(root), "--out", str(out)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:] + done.stdout[-3000:])
        row = {"features": n_features, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"{'features':>8} {'seconds':>8} {'CPU s':>7} {'peak RSS MB':>12} {'after imports':>14} "
          f"{'MB written':>11} {'index.html MB':>14} {'s/1k feat':>10}")
    for r in rows:
        print(f"{r['features']:>8} {r['seconds']:>8} {r['cpu_seconds']:>7} {r['peak_rss_mb']:>12} "
              f"{r.get('baseline_rss_mb', '-'):>14} {r['mb_written']:>11} {r['index_html_mb']:>14} "
              f"{1000 * r['seconds'] / r['features']:>10.1f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"ratio {b['features']}/{a['features']}: time x{b['seconds'] / a['seconds']:.1f}, "
              f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
