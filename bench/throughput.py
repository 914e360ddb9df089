"""Throughput (issue 8, target 1): no-op consume rate of pre-queued work, each consumer's whole process timed.

    python bench/throughput.py [--quick] [--runs 5] [--sizes 300,5000,20000] [--dir DIR]

Contenders, alternated within each round, median of --runs rounds:
- spoolpipe: `spoolpipe worker REPO --until-idle`, durability on (the default), other settings default;
- huey FileHuey: a fresh process running huey's own per-task loop (dequeue, execute) until the queue is
  empty (huey_consumer has no run-until-idle mode);
- kombu filesystem transport: a fresh process taking and acking messages from a SimpleQueue until Empty;
- bare loop: a fresh Python process doing rename, read, unlink per file (the baseline).
Then two daemons on one repository, each `taskset`-pinned to its own core (pool.size=1), against one pinned
daemon; and CPU-bound activities with pool.size=2 against pool.size=1.
Writes results/throughput.json and results/throughput.png (rate against queue size).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import benchlib as b

BARE_LOOP = """
import os, sys
inbox, claimed = sys.argv[1], sys.argv[2]
for name in os.listdir(inbox):
    path = os.path.join(inbox, name)
    mine = os.path.join(claimed, name)
    os.rename(path, mine)
    with open(mine, "rb") as f:
        f.read()
    os.unlink(mine)
"""


@dataclass(frozen=True)
class PythonQueue:
    """A file queue driven from Python: `app` (imported as NAME_app, with sys.argv[1] the queue folder) is
    filled by `produce` (untimed, sys.argv[2] messages), then drained by `consume` (timed whole); `files`
    is where, below the folder, the waiting messages are."""

    name: str
    app: str
    produce: str
    consume: str
    files: str


HUEY = PythonQueue(
    name="huey",
    app="""
import sys
from huey import FileHuey

huey = FileHuey("bench", path=sys.argv[1])

@huey.task()
def noop():
    return None
""",
    produce="import sys, huey_app\nfor _ in range(int(sys.argv[2])): huey_app.noop()\n",
    consume="""
import huey_app
huey = huey_app.huey
while (task := huey.dequeue()) is not None:
    huey.execute(task)
""",
    files="queue",
)

KOMBU = PythonQueue(
    name="kombu",
    app="""
import sys
from kombu import Connection

def queue():
    folder = sys.argv[1]
    options = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "-control"}
    return Connection(transport="filesystem", transport_options=options).SimpleQueue("bench")
""",
    produce="""
import sys, kombu_app
q = kombu_app.queue()
for _ in range(int(sys.argv[2])):
    q.put({"type": "noop", "data": {}})
""",
    consume="""
import kombu_app
q = kombu_app.queue()
while True:
    try:
        q.get(block=False).ack()
    except q.Empty:
        break
""",
    files=".",
)

RIVAL_TARGETS = {300: 1.0, 5000: 10.0, 20000: 10.0}
"""Queue size -> least spoolpipe / huey and spoolpipe / kombu (issue 8); other sizes are shown, not judged."""

CPU_LOOPS = 1_000_000
"""Loops of bench.cpu per activity: about 50 ms of one core here, so the work outweighs start-up."""


def spoolpipe_rate(base: Path, queued: int) -> float:
    work = b.fresh(base, "spoolpipe")
    repo = b.make_repository(work)
    b.enqueue(repo / "inbox", b.ids("a", 0, queued), b.activity("bench.noop"))
    seconds = b.run_whole([b.worker_command(repo, until_idle=True)], work / "logs")
    return checked(queued, b.entries(repo / "done"), "spoolpipe") / seconds


def bare_rate(base: Path, queued: int) -> float:
    work = b.fresh(base, "bare")
    (work / "inbox").mkdir()
    (work / "claimed").mkdir()
    b.enqueue(work / "inbox", b.ids("a", 0, queued), b.activity("bench.noop"))
    seconds = b.run_whole(
        [[b.PYTHON, "-c", BARE_LOOP, str(work / "inbox"), str(work / "claimed")]], work / "logs"
    )
    checked(0, b.entries(work / "inbox"), "bare loop (left over)")
    return queued / seconds


def python_queue_rate(base: Path, queued: int, queue: PythonQueue) -> float:
    work = b.fresh(base, queue.name)
    (work / f"{queue.name}_app.py").write_text(queue.app)
    folder = work / "queue"
    folder.mkdir()
    subprocess.run([b.PYTHON, "-c", queue.produce, str(folder), str(queued)], cwd=work, check=True)
    checked(queued, b.entries(folder / queue.files), f"{queue.name} (queued)")
    seconds = b.run_whole([[b.PYTHON, "-c", queue.consume, str(folder)]], work / "logs", cwd=work)
    checked(0, b.entries(folder / queue.files), f"{queue.name} (left over)")
    return queued / seconds


def checked(expected: int, found: int, what: str) -> int:
    if found != expected:
        raise RuntimeError(f"{what}: expected {expected} files, found {found}")
    return found


def daemons_rate(base: Path, queued: int, daemons: int) -> float:
    """`daemons` workers on one repository, worker i pinned to core i, pool.size=1 each."""
    work = b.fresh(base, f"daemons{daemons}")
    repo = b.make_repository(work, {"pool.size": 1})
    b.enqueue(repo / "inbox", b.ids("a", 0, queued), b.activity("bench.noop"))
    seconds = b.run_whole(
        [b.worker_command(repo, f"w{i}", until_idle=True, cpu=i) for i in range(daemons)], work / "logs"
    )
    return checked(queued, b.entries(repo / "done"), f"{daemons} daemons") / seconds


def cpu_rate(base: Path, count: int, pool: int) -> float:
    work = b.fresh(base, f"cpu{pool}")
    repo = b.make_repository(work, {"pool.size": pool})
    b.enqueue(repo / "inbox", b.ids("c", 0, count), b.activity("bench.cpu", {"loops": CPU_LOOPS}))
    seconds = b.run_whole([b.worker_command(repo, until_idle=True)], work / "logs")
    return checked(count, b.entries(repo / "done"), f"pool.size={pool}") / seconds


def plot(path: Path, by_size: Mapping[int, Mapping[str, b.Figure]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    sizes = sorted(by_size)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in by_size[sizes[0]]:
        medians = [by_size[s][name].median for s in sizes]
        low = [m - min(by_size[s][name].values) for s, m in zip(sizes, medians, strict=True)]
        high = [max(by_size[s][name].values) - m for s, m in zip(sizes, medians, strict=True)]
        ax.errorbar(sizes, medians, yerr=[low, high], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("activities queued before the consumer starts")
    ax.set_ylabel("activities/s (whole process, median; bars: min-max)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    p = b.parser(__doc__)
    p.add_argument("--sizes", default=None, help="comma-separated queue sizes (default 300,5000,20000)")
    args = p.parse_args()
    runs = args.runs or 5
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([300, 2000] if args.quick else [300, 5000, 20000])
    )
    scale_queued = 2000 if args.quick else 5000
    cpu_count = 60 if args.quick else 200
    results: dict[str, Any] = {"machine": b.machine(), "quick": args.quick, "runs": runs}
    found: list[b.Target] = []
    with b.workdir(args.dir, "throughput") as base:
        by_size: dict[int, dict[str, b.Figure]] = {}
        for size in sizes:
            print(f"\n# {size:,} queued", file=sys.stderr)
            contenders: dict[str, Callable[[], float]] = {
                "spoolpipe worker --until-idle (durability on)": partial(spoolpipe_rate, base, size),
                "huey FileHuey": partial(python_queue_rate, base, size, HUEY),
                "kombu filesystem transport": partial(python_queue_rate, base, size, KOMBU),
                "bare rename-claim loop": partial(bare_rate, base, size),
            }
            figures = b.alternate(contenders, runs, "activities/s")
            by_size[size] = figures
            b.table(f"No-op consume rate, {size:,} queued", figures, baseline="bare rename-claim loop")
            sp = figures["spoolpipe worker --until-idle (durability on)"].median
            for rival in ("huey FileHuey", "kombu filesystem transport"):
                if size in RIVAL_TARGETS:
                    ratio = sp / figures[rival].median
                    found.append(
                        b.Target(f"spoolpipe / {rival}, {size:,} queued", ratio, RIVAL_TARGETS[size], True)
                    )
            if size == 20000:
                ratio = sp / figures["bare rename-claim loop"].median
                found.append(b.Target(f"spoolpipe / bare loop, {size:,} queued", ratio, 1 / 3, True))
        results["consume"] = {
            str(s): {n: f.as_json() for n, f in figs.items()} for s, figs in by_size.items()
        }

        print(f"\n# two pinned daemons, {scale_queued:,} queued", file=sys.stderr)
        scale = b.alternate(
            {
                "one daemon, pinned to core 0": lambda: daemons_rate(base, scale_queued, 1),
                "two daemons, pinned to cores 0 and 1": lambda: daemons_rate(base, scale_queued, 2),
            },
            runs,
            "activities/s",
        )
        b.table(
            f"Two daemons on one repository, {scale_queued:,} queued", scale, "one daemon, pinned to core 0"
        )
        found.append(
            b.Target(
                "two pinned daemons / one",
                scale["two daemons, pinned to cores 0 and 1"].median
                / scale["one daemon, pinned to core 0"].median,
                1.7,
                True,
            )
        )
        results["two_daemons"] = {"queued": scale_queued, **{n: f.as_json() for n, f in scale.items()}}

        print(f"\n# CPU-bound, {cpu_count} activities", file=sys.stderr)
        cpu = b.alternate(
            {
                "pool.size=1": lambda: cpu_rate(base, cpu_count, 1),
                "pool.size=2": lambda: cpu_rate(base, cpu_count, 2),
            },
            runs,
            "activities/s",
        )
        b.table(f"CPU-bound activities ({CPU_LOOPS:,} loops each), {cpu_count} queued", cpu, "pool.size=1")
        found.append(
            b.Target(
                "pool.size=2 / pool.size=1, CPU-bound",
                cpu["pool.size=2"].median / cpu["pool.size=1"].median,
                1.8,
                True,
            )
        )
        results["cpu_bound"] = {
            "activities": cpu_count,
            "loops": CPU_LOOPS,
            **{n: f.as_json() for n, f in cpu.items()},
        }

    results["targets"] = b.targets(found)
    b.write_json(args.out, "throughput", results)
    kind = "smoke run, --quick" if args.quick else f"median of {runs} runs"
    plot(args.out / "throughput.png", by_size, f"No-op consume rate, same disk, one run ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
