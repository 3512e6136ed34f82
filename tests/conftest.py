"""Fixtures shared by every test module: fresh workspaces, the shared Swiss-Prot data, a CLI runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from storage.workspace import Workspace

SHARED_SWISSPROT = Path(__file__).resolve().parents[2] / "shared" / "data" / "swissprot"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> CliResult:
    """Run `plmlabel ARGS` in-process through the real entry point (error mapping included)."""
    from agent.cli import main

    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return CliResult(code, out.getvalue().decode(), err.getvalue().decode())



@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (exact-match tests of SAE math; steadier on shared cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    return invoke


@pytest.fixture
def swissprot_dir() -> Path:
    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    return SHARED_SWISSPROT


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.init()
    return ws
