"""serve under concurrency: the model is loaded once however many requests arrive together, model work
never blocks the event loop, and the read-only database keeps serving while a labeling job writes."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agent.serve.app import create_app
from agent.serve.model_pool import ModelPool, workspace_loader
from agent.serve.readonly_db import read_only_database
from storage.labels import LabelRecord, save_label
from tests.serve_fixtures import SAE_ID, copy_workspace, running_server, shared_live_workspace
from tests.test_serve import SEQUENCE


@pytest.fixture(scope="module")
def live():
    from tests.conftest import SHARED_SWISSPROT

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    return shared_live_workspace(SHARED_SWISSPROT)


def test_concurrent_gets_load_once():
    calls = []

    def slow_loader(sae_id):
        calls.append(sae_id)
        time.sleep(0.3)
        return object()

    pool = ModelPool(slow_loader)
    with ThreadPoolExecutor(16) as executor:
        got = list(executor.map(lambda _: pool.get("a"), range(16)))
    assert calls == ["a"] and pool.loads == 1
    assert all(g is got[0] for g in got)
    pool.get("b")
    assert calls == ["a", "b"]


def test_concurrent_pastes_load_the_model_once(live):
    real = workspace_loader(live)
    loads = []

    def counting(sae_id):
        loads.append(sae_id)
        time.sleep(0.5)  # a slow load, so every request arrives while it runs
        return real(sae_id)

    pool = ModelPool(counting)
    with running_server(create_app(live, pool=pool)) as base, httpx.Client(base_url=base, timeout=60) as http:
        def paste(n: int) -> int:
            return http.post(f"/sae/{SAE_ID}/analyze", data={"text": SEQUENCE[n:]}).status_code

        with ThreadPoolExecutor(8) as executor:
            statuses = list(executor.map(paste, range(8)))
    assert statuses == [200] * 8
    assert loads == [SAE_ID] and pool.loads == 1


def test_model_work_does_not_block_the_event_loop(live):
    real = workspace_loader(live)

    def slow(sae_id):
        time.sleep(2.0)
        return real(sae_id)

    with running_server(create_app(live, pool=ModelPool(slow))) as base:
        result = {}

        def paste():
            result["status"] = httpx.post(f"{base}/sae/{SAE_ID}/analyze", data={"text": SEQUENCE},
                                          timeout=60).status_code

        thread = threading.Thread(target=paste)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert httpx.get(f"{base}/sae/{SAE_ID}/", timeout=10).status_code == 200
        answered = time.monotonic() - started
        assert thread.is_alive()  # the paste is still loading its model...
        assert answered < 1.5  # ...while other pages are served
        thread.join(30)
    assert result["status"] == 200


def test_serving_goes_on_while_a_labeling_job_writes(live, tmp_path):
    ws = copy_workspace(live, tmp_path / "ws")
    errors: list[BaseException] = []
    written = list(range(10, 30))

    def writer():
        try:
            for feature in written:
                with ws.db() as db:
                    save_label(db, LabelRecord(sae_id=SAE_ID, feature=feature, label=f"Written {feature}",
                                               description="by the writer thread", pearson=0.4,
                                               n_heldout=8), [])
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    with running_server(create_app(ws)) as base, httpx.Client(base_url=base, timeout=30) as http:
        thread = threading.Thread(target=writer)
        thread.start()
        statuses = []
        while thread.is_alive() or len(statuses) < 20:
            statuses.append(http.get(f"/sae/{SAE_ID}/", params={"q": "written"}).status_code)
            statuses.append(http.get(f"/sae/{SAE_ID}/features/{len(statuses) % 32}").status_code)
        thread.join()
        final = http.get(f"/sae/{SAE_ID}/", params={"q": "written"}).text
    assert not errors, errors
    assert set(statuses) == {200}
    assert final.count('class="feature-row"') == len(written)  # what the writer committed is served


def test_serve_reads_without_writing(live, tmp_path):
    ws = copy_workspace(live, tmp_path / "ws")
    with ws.db() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = hashlib.sha256(ws.db_path.read_bytes()).hexdigest()
    with running_server(create_app(ws)) as base, httpx.Client(base_url=base, timeout=30) as http:
        for url in (f"/sae/{SAE_ID}/", f"/sae/{SAE_ID}/features/1", f"/sae/{SAE_ID}/features/3"):
            assert http.get(url).status_code == 200
        assert http.post(f"/sae/{SAE_ID}/analyze", data={"text": SEQUENCE}).status_code == 200
    assert hashlib.sha256(ws.db_path.read_bytes()).hexdigest() == before
    with read_only_database(ws.db_path) as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("delete from labels")


def test_the_result_cache_is_bounded_in_bytes(monkeypatch):
    import numpy as np

    monkeypatch.setattr("agent.serve.model_pool.compute_activations",
                        lambda models, sequence: np.zeros((len(sequence), 1000), dtype=np.float32))
    pool = ModelPool(lambda sae_id: object(), cache_bytes=10 * 4000 * 10)
    for n in range(30):
        pool.activations("a", "M" * (10 + n))
    assert sum(a.nbytes for a in pool._cache.values()) <= 10 * 4000 * 10
    assert len(pool._cache) >= 1
