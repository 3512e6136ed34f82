"""A regular (non-editable) install must carry everything the demo reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "tests"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out)],
        capture_output=True, text=True, cwd=out,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1:]}")
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
