"""Make files and folders read-only in a way that holds for root too (CI runs the tests as root).

Root ignores permission bits, so as root the immutable attribute (`chattr +i`, needs CAP_LINUX_IMMUTABLE
and ext2/3/4, xfs or btrfs) is used; otherwise the write bits are cleared. Either way a probe write must
fail, or the test fails: a test of read-only behaviour never passes without a read-only workspace.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)


def _writable(path: Path) -> bool:
    try:
        if path.is_dir():
            probe = path / ".read-only-probe"
            probe.write_text("")
            probe.unlink()
        else:
            with open(path, "ab"):
                pass
    except OSError:
        return False
    return True


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Within the block, `paths` (files or folders, not recursive) cannot be written."""
    targets = [Path(p) for p in paths]
    modes = {p: p.stat().st_mode for p in targets}
    if _as_root():
        if shutil.which("chattr") is None:
            pytest.fail("running as root, read-only files need `chattr` (e2fsprogs), which is not installed")
        made = _chattr("+i", targets)
        if made.returncode != 0:
            pytest.fail(f"running as root, `chattr +i` failed, so nothing can be made read-only: "
                        f"{made.stderr.strip()}")
    else:
        for p in targets:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        still = [str(p) for p in targets if _writable(p)]
        if still:
            pytest.fail(f"could not make these read-only: {', '.join(still)}")
        yield
    finally:
        if _as_root():
            _chattr("-i", targets)
        for p in targets:
            p.chmod(stat.S_IMODE(modes[p]))
