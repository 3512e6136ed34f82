"""Bench: Swiss-Prot ingest speed and memory on the shared 1,033-entry flat file.

    parse           storage.swissprot.parse_file over the file (gzip, current flat syntax)
    parse+import    storage.proteins.import_files into a fresh SQLite database on disk

Speed is the best of `--repeat` runs without tracing. Memory is the tracemalloc peak of one more run
(Python allocations only; SQLite's page cache is not seen by tracemalloc) and the peak resident set
(VmHWM) of a fresh child process doing only that run. To show that memory does not grow with the
file, the runs are repeated on files holding the sample `--scale` times over (concatenated,
re-gzipped, accessions made unique), for the flat file and for the XML sample.

    python bench/ingest.py [--repeat 3] [--scale 4]
"""

from __future__ import annotations

import argparse
import gzip
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.db import Database  # noqa: E402
from storage.proteins import import_files  # noqa: E402
from storage.swissprot import parse_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "swissprot"


def _quiet(message: str) -> None:
    pass


def parse_only(path: Path) -> int:
    return sum(1 for _ in parse_file(path, on_warning=_quiet))


def parse_and_import(path: Path) -> int:
    with tempfile.TemporaryDirectory() as folder, Database.open(Path(folder) / "bench.db", create=True) as db:
        return import_files(db, [path], on_warning=_quiet).total


def timed(run: Callable[[Path], int], path: Path, repeat: int) -> tuple[int, float]:
    best = float("inf")
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = run(path)
        best = min(best, time.perf_counter() - started)
    return count, best


def traced_peak(run: Callable[[Path], int], path: Path) -> float:
    tracemalloc.start()
    try:
        run(path)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM (reset by exec, unlike ru_maxrss, which a child forked
    from a big parent inherits on Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_maxrss(name: str, path: Path) -> float:
    """Peak RSS (MiB) of a fresh interpreter that imports plmlabel and does one run on `path`."""
    out = subprocess.run([sys.executable, __file__, "--child", name, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


RUNS: dict[str, Callable[[Path], int]] = {"parse": parse_only, "parse+import": parse_and_import}


def scaled_copy(source: Path, times: int, folder: Path, kind: str) -> Path:
    """The sample `times` over, each copy's accessions suffixed so that every entry stays distinct."""
    text = gzip.decompress(source.read_bytes()).decode()
    if kind == "flat":
        parts = [re.sub(r"^AC   (\w+);", rf"AC   \g<1>X{i};", text, flags=re.M) for i in range(times)]
        body = "".join(parts)
    else:
        head, _, rest = text.partition("<entry ")
        entries, _, tail = ("<entry " + rest).rpartition("</entry>")
        entries += "</entry>"
        body = head + "".join(re.sub(r"<accession>(\w+)<", rf"<accession>\g<1>X{i}<", entries)
                              for i in range(times)) + tail
    target = folder / f"{source.name}.x{times}.gz"
    target.write_bytes(gzip.compress(body.encode(), compresslevel=6))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("RUN", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] in RUNS:
            RUNS[args.child[0]](Path(args.child[1]))
        print(peak_rss_mib())
        return

    sample = SHARED / "sprot_sample.dat.gz"
    raw_mb = len(gzip.decompress(sample.read_bytes())) / 2**20
    print(f"file: {sample.name}  ({sample.stat().st_size / 2**20:.1f} MiB gzip, {raw_mb:.1f} MiB text)")
    print(f"{'run':<14}{'entries':>9}{'seconds':>9}{'entries/s':>11}{'MiB text/s':>12}"
          f"{'traced MiB':>12}{'maxrss MiB':>12}")
    for name, run in RUNS.items():
        count, seconds = timed(run, sample, args.repeat)
        peak = traced_peak(run, sample)
        print(f"{name:<14}{count:>9,}{seconds:>9.2f}{count / seconds:>11,.0f}{raw_mb / seconds:>12.1f}"
              f"{peak:>12.1f}{child_maxrss(name, sample):>12.0f}")
    baseline = child_maxrss("none", sample)
    print(f"(maxrss of a child that only imports plmlabel's storage layer: {baseline:.0f} MiB)")

    print(f"\nmemory vs file size: the file 1x and {args.scale}x over (traced peak / maxrss, MiB)")
    with tempfile.TemporaryDirectory() as folder:
        for source, kind in ((sample, "flat"), (SHARED / "sprot_sample.xml.gz", "xml")):
            big = scaled_copy(source, args.scale, Path(folder), kind)
            for name, run in RUNS.items():
                small = f"{traced_peak(run, source):6.1f} / {child_maxrss(name, source):4.0f}"
                large = f"{traced_peak(run, big):6.1f} / {child_maxrss(name, big):4.0f}"
                print(f"{kind:<5} {name:<14} 1x {small}   {args.scale}x {large}")


if __name__ == "__main__":
    main()
