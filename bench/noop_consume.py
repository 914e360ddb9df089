"""No-op consume rate: spoolpipe against a bare rename-claim loop and huey's FileHuey, same disk, one run.

    .venv/bin/pip install '.[bench]' && .venv/bin/python bench/noop_consume.py [--jobs 5000] [--dir DIR]

Each contender gets the same number of pre-written no-op jobs and is timed from
its first to its last completion (start-up excluded). Absolute rates depend on
the disk and the machine's load; the ratios printed at the end are the figures
to report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from spoolpipe import config
from spoolpipe.activity import Activity, new_id
from spoolpipe.repository import Repository


def bare_loop(base: Path, jobs: int) -> float:
    """Write+rename to enqueue, then rename-claim, read, rename-to-done: the least any file queue does."""
    inbox, claimed, done = base / "inbox", base / "claimed", base / "done"
    for d in (inbox, claimed, done):
        d.mkdir(parents=True)
    for i in range(jobs):
        tmp = base / f".{i}.tmp"
        tmp.write_bytes(b'{"type": "noop", "data": {}}')
        os.rename(tmp, inbox / f"{i:08d}.json")
    start = time.perf_counter()
    for name in sorted(os.listdir(inbox)):
        os.rename(inbox / name, claimed / name)
        (claimed / name).read_bytes()
        os.rename(claimed / name, done / name)
    return jobs / (time.perf_counter() - start)


def spoolpipe_worker(base: Path, jobs: int, fsync: bool) -> float:
    repo = base / "repo"
    Repository.create(repo, config.render_defaults())
    (base / "bench_procs.py").write_text(
        "from spoolpipe import processor\n\n@processor('noop')\ndef noop(a, ctx):\n    return None\n"
    )
    (repo / "spoolpipe.properties").write_text(
        textwrap.dedent(
            f"""
            processors = bench_procs
            processors.path = {base}
            durability.fsync = {str(fsync).lower()}
            log.level = WARNING
            """
        )
    )
    writer = Repository(repo, fsync=False)
    for _ in range(jobs):
        writer.submit(Activity(new_id(), "noop"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "worker", str(repo), "--worker-id", "bench", "--until-idle"],
        stderr=subprocess.DEVNULL,
    )
    first: tuple[float, int] | None = None
    while proc.poll() is None:
        count = len(os.listdir(repo / "done"))
        if count and first is None:
            first = (time.perf_counter(), count)
        time.sleep(0.01)
    end = time.perf_counter()
    count = len(os.listdir(repo / "done"))
    assert count == jobs, f"spoolpipe finished {count}/{jobs}"
    assert first is not None
    return (count - first[1]) / (end - first[0])


def huey_file(base: Path, jobs: int) -> float | None:
    try:
        from huey import FileHuey
    except ImportError:
        return None
    huey = FileHuey("bench", path=str(base / "huey"), immediate=False)

    @huey.task()
    def noop() -> None:
        return None

    for _ in range(jobs):
        noop()
    start = time.perf_counter()
    done = 0
    while True:
        task = huey.dequeue()
        if task is None:
            break
        huey.execute(task)
        done += 1
    assert done == jobs
    return jobs / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="where to run (default: a temp dir)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spoolpipe-bench-", dir=args.dir))
    try:
        rates = {
            "bare rename-claim loop": bare_loop(base / "bare", args.jobs),
            "spoolpipe (fsync on)": spoolpipe_worker(base / "sp", args.jobs, True),
            "spoolpipe (fsync off)": spoolpipe_worker(base / "sp-nofsync", args.jobs, False),
        }
        huey_rate = huey_file(base, args.jobs)
        if huey_rate is not None:
            rates["huey FileHuey"] = huey_rate
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for name, rate in rates.items():
        print(f"{name:28s} {rate:10.0f} jobs/s")
    sp = rates["spoolpipe (fsync on)"]
    print(f"\nspoolpipe / bare loop: {sp / rates['bare rename-claim loop']:.2f}  (target >= 0.33)")
    if "huey FileHuey" in rates:
        print(f"spoolpipe / huey FileHuey: {sp / rates['huey FileHuey']:.1f}  (target >= 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
