"""`plmlabel check`, the files half: do the SAE weights and indexes on disk match the database?

For each SAE row: its folder and weights file exist, the weights' sha256 is the one recorded, its index
(when there is one) was built from those weights and its arrays still hash to the manifest's index hash,
and the feature statistics in the database come from that index. Reads only.
"""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

from storage.check import Problem, check_database, read_only_connection
from storage.workspace import Workspace


def check_workspace(workspace: Workspace) -> list[Problem]:
    """Every problem of the workspace: the database's, then the files' (skipped if the DB is unreadable)."""
    problems = check_database(workspace.db_path)
    if any(p.where == str(workspace.db_path) for p in problems):
        return problems  # the file itself is unsound: its rows cannot be trusted to check files against
    conn = read_only_connection(workspace.db_path)
    conn.row_factory = sqlite3.Row
    try:
        saes = [dict(r) for r in conn.execute("select sae_id, path, weights_hash from saes order by sae_id")]
        stats: dict[str, set[str | None]] = {}
        for row in conn.execute("select distinct sae_id, index_hash from sae_features"):
            stats.setdefault(row["sae_id"], set()).add(row["index_hash"])
    finally:
        conn.close()
    for sae in saes:
        problems.extend(_check_sae(workspace, sae, stats.get(sae["sae_id"], set())))
    return problems


def _check_sae(workspace: Workspace, sae: dict, stat_hashes: set[str | None]) -> list[Problem]:
    from sae.index import sae_directory
    from sae.index_build import _index_hash
    from sae.model import WEIGHTS_FILENAME, weights_hash

    sae_id = sae["sae_id"]
    folder = sae_directory(workspace, SimpleNamespace(**sae))
    weights = folder / WEIGHTS_FILENAME
    where = f"SAE {sae_id}"
    retrain = f"re-import it with `plmlabel sae import --force --name {sae_id}`, or retrain it"
    if not weights.exists():
        return [Problem(where=where, problem=f"its weights file {weights} is missing", fix=retrain)]
    current = weights_hash(folder)
    problems = []
    if current != sae["weights_hash"]:
        problems.append(Problem(where=where, problem="its weights file differs from the one recorded "
                                "(sha256 mismatch)", fix=retrain))
    index = workspace.index_path(sae_id)
    manifest_path = index / "manifest.json"
    reindex = f"rebuild the index with `plmlabel index {sae_id}`"
    if not manifest_path.exists():
        if stat_hashes:
            problems.append(Problem(where=where, problem="the database has feature statistics but there is "
                                    f"no index at {index}", fix=reindex))
        return problems
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = manifest["index_hash"]
        actual = _index_hash(index, {k: v for k, v in manifest.items() if k != "index_hash"})
    except (OSError, ValueError, KeyError) as exc:
        return [*problems, Problem(where=where, problem=f"its index at {index} cannot be read ({exc})",
                                   fix=reindex)]
    if manifest.get("weights_hash") != current:
        problems.append(Problem(where=where, problem="its index was built from other weights", fix=reindex))
    if actual != recorded:
        problems.append(Problem(where=where, problem=f"the arrays of its index at {index} changed since it "
                                "was built (index hash mismatch)", fix=reindex))
    if stat_hashes and stat_hashes != {recorded}:
        problems.append(Problem(where=where, problem="its feature statistics in the database come from "
                                "another index than the one on disk", fix=reindex))
    return problems


def problems_json(problems: list[Problem]) -> dict:
    return {"ok": not problems, "problems": [p.model_dump() for p in problems]}

