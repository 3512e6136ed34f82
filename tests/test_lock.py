from __future__ import annotations

import multiprocessing
import time

import pytest

from storage.errors import LockedError
from storage.lock import workspace_lock


def _hold(path, ready, release):
    with workspace_lock(path, "nightly label"):
        ready.set()
        release.wait(10)


def test_second_holder_is_refused_with_who_holds_it(tmp_path):
    path = tmp_path / ".plmlabel.lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockedError, match=f"nightly label, pid {holder.pid}"), workspace_lock(path, "x"):
            pass
    finally:
        release.set()
        holder.join(10)
    with workspace_lock(path, "after"):  # released when the holder ended
        pass


def test_lock_is_released_when_the_holder_dies(tmp_path):
    path = tmp_path / ".plmlabel.lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join(10)
    time.sleep(0.05)
    with workspace_lock(path, "after crash"):
        pass
