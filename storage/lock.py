"""A workspace lock so two labeling jobs never run at once on one workspace.

An advisory `flock` on `<workspace>/.plmlabel.lock`: the kernel drops it when the holder dies, so a
crashed job never leaves a stale lock behind. The file records the holder's pid and start time so the
refusal message can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.db import utcnow
from storage.errors import LockedError


@contextmanager
def workspace_lock(path: Path, purpose: str) -> Iterator[None]:
    """Hold the lock at `path` for the block, or raise LockedError at once if another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - must stay open while the lock is held
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            raise LockedError(
                f"another plmlabel job holds the workspace lock ({holder}); try again when it has finished."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "purpose": purpose, "since": utcnow()}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"{info['purpose']}, pid {info['pid']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
