"""A regular (non-editable) install must carry everything the demo reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".ruff_cache", "tests", "plmlabel-demo", "demo-workspace")


def _build_wheel(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out)],
        capture_output=True, text=True, cwd=out,
    )


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=_NOT_COPIED)
    build = _build_wheel(source, out)
    # A failed build is a failure, never a skip: a broken pyproject.toml must not pass.
    assert build.returncode == 0, f"the wheel did not build:\n{build.stderr.strip()[-2000:]}"
    (wheel,) = out.glob("plmlabel-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_carries_package_data(wheel_names):
    for name in (
        "storage/sample_data/swissprot_demo.dat.gz",
        "storage/sample_data/NOTICE.md",
        "prompts/explain.txt",
        "prompts/simulate.txt",
        "storage/viewer/viewer.js",
        "storage/viewer/viewer.css",
    ):
        assert name in wheel_names, name


def test_wheel_has_the_console_script_and_no_tests(wheel_names):
    assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel_names)
    assert not any(n.startswith("tests/") for n in wheel_names)


def test_a_broken_pyproject_fails_the_build(tmp_path):
    """The build the fixture relies on really fails on a broken pyproject.toml (so the fixture can fail)."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_COPIED)
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[project]", "[project\n", 1))
    build = _build_wheel(source, tmp_path)
    assert build.returncode != 0
    assert not list(tmp_path.glob("plmlabel-*.whl"))
