"""Backlog (issue 8, target 4): what a big inbox or a big done/ costs a worker.

    python bench/backlog.py [--quick] [--runs 5] [--take 500] [--dir DIR]

Backlogs (--quick uses 1,000 / 3,000 / 10,000 and 10,000 in done/):
- 1,000 waiting (the baseline), 30,000 waiting, 100,000 waiting;
- 1,000 waiting with 100,000 records already in done/ (written directly in the documented record format);
- 100,000 waiting with priorities 0-9 (one in ten each, marked in the file names as spoolpipe writes them).
For each, a daemon (`spoolpipe worker REPO`, durability on, default pool) runs bench.stamp activities; it is
stopped with SIGTERM once --take of them have started, and the repository is topped up to the same backlog
for the next run (the backlogs alternate within each round). Measured per run:
- start-up to first activity: from starting the process to the first processor start;
- claim cost: seconds per activity between the first and the --take-th processor start (claim, run, commit:
  the part a backlog changes is the claim);
- peak RSS of the daemon process alone, and of the daemon plus its pool, sampled every 0.25 s.
Last, start-up of `worker --until-idle` on an empty repository (whole process), alternated with a bare
`python -c pass` (the interpreter's own start-up, the baseline), and whether the worker imports Pillow
(`python -X importtime`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import benchlib as b

DONE_PREFIX = "d"


class Backlog:
    """A repository kept at `waiting` activities in inbox/ (and `done` fixture records in done/)."""

    def __init__(
        self, base: Path, name: str, waiting: int, done: int, take: int, *, priorities: bool = False
    ) -> None:
        self.work = b.fresh(base, name)
        self.repo = b.make_repository(self.work)
        self.waiting, self.take, self.priorities = waiting, take, priorities
        self.serial = 0
        self._fill_done(done)
        self.runs: list[dict[str, float]] = []

    def _fill_done(self, count: int) -> None:
        """Records of activities finished long ago, in the documented done/ID.json format."""
        for name in b.ids(DONE_PREFIX, 0, count):
            record = {
                "id": name,
                "type": "bench.stamp",
                "data": {},
                "result": None,
                "spoolpipe": {
                    "status": "done",
                    "attempts": 1,
                    "worker": "bench",
                    "host": "bench",
                    "pid": 1,
                    "started_at": "2026-01-01T00:00:00.000+00:00",
                    "finished_at": "2026-01-01T00:00:00.001+00:00",
                    "follow_ups": [],
                },
            }
            (self.repo / "done" / f"{name}.json").write_text(json.dumps(record))

    def _top_up(self) -> None:
        missing = self.waiting - b.entries(self.repo / "inbox")
        names = b.ids("w", self.serial, missing)
        self.serial += missing
        if not self.priorities:
            b.enqueue(self.repo / "inbox", names, b.activity("bench.stamp"))
            return
        for priority in range(10):  # the names submit writes: ID~pP.json, ID.json for the default 5
            mark = "" if priority == 5 else f"~p{priority}"
            body = json.dumps({"type": "bench.stamp", "data": {}, "priority": priority}).encode()
            b.enqueue(self.repo / "inbox", [f"{n}{mark}" for n in names[priority::10]], body)

    def run(self) -> dict[str, float]:
        self._top_up()
        stamps = b.StampLog(self.work / f"stamps-{len(self.runs)}.log")
        started = time.monotonic()
        proc = b.start(
            b.worker_command(self.repo, until_idle=False), self.work / "worker.stderr", env=stamps.env()
        )
        sampler = b.RssSampler(proc.pid)
        try:
            b.wait_for(
                lambda: stamps.refresh() >= self.take,
                600,
                f"{self.take} activities started",
                poll=0.05,
                worker=proc,
            )
        finally:
            sampler.close()
            b.stop(proc)
        for name in stamps.started:  # keep done/ at its fixture: drop this run's records
            with_suffix = self.repo / "done" / f"{name}.json"
            if with_suffix.exists():
                with_suffix.unlink()
        starts = stamps.ordered()[: self.take]
        result = {
            "first_start_s": starts[0] - started,
            "claim_cost_ms": (starts[-1] - starts[0]) / (len(starts) - 1) * 1000,
            "daemon_rss_max_mb": max(s.daemon for s in sampler.samples) / b.MB,
            "tree_rss_max_mb": max(s.tree for s in sampler.samples) / b.MB,
        }
        self.runs.append(result)
        return result


def startup_seconds(command: list[str], work: Path) -> float:
    return b.run_whole([command], work / "logs")


def imports_pillow(repo: Path) -> bool:
    err = subprocess.run(
        [b.PYTHON, "-X", "importtime", *b.worker_command(repo, until_idle=True)[1:]],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return any(line.rsplit("|", 1)[-1].strip().startswith("PIL") for line in err.splitlines() if "|" in line)


def main() -> int:
    p = b.parser(__doc__)
    p.add_argument("--take", type=int, default=500, help="activities started per run (default 500)")
    args = p.parse_args()
    runs = args.runs or 5
    small, medium, large = (1000, 3000, 10_000) if args.quick else (1000, 30_000, 100_000)
    if args.take * 2 > small:
        p.error("--take must be at most half the smallest backlog")
    results: dict[str, Any] = {"machine": b.machine(), "quick": args.quick, "runs": runs, "take": args.take}
    with b.workdir(args.dir, "backlog") as base:
        print("# building backlogs", file=sys.stderr, flush=True)
        backlogs = {
            f"{small:,} waiting (baseline)": Backlog(base, "small", small, 0, args.take),
            f"{medium:,} waiting": Backlog(base, "medium", medium, 0, args.take),
            f"{large:,} waiting": Backlog(base, "large", large, 0, args.take),
            f"{small:,} waiting, {large:,} in done/": Backlog(base, "done", small, large, args.take),
            f"{large:,} waiting, priorities 0-9": Backlog(
                base, "priorities", large, 0, args.take, priorities=True
            ),
        }
        b.alternate(
            {name: partial(lambda bl: bl.run()["claim_cost_ms"], bl) for name, bl in backlogs.items()},
            runs,
            "ms/activity",
        )
        measured: dict[str, dict[str, b.Figure]] = {
            key: {name: b.Figure(unit, [r[key] for r in bl.runs]) for name, bl in backlogs.items()}
            for key, unit in (
                ("claim_cost_ms", "ms/activity"),
                ("first_start_s", "s"),
                ("daemon_rss_max_mb", "MB"),
                ("tree_rss_max_mb", "MB"),
            )
        }
        baseline = f"{small:,} waiting (baseline)"
        b.table(
            f"Claim cost: time per activity over the first {args.take} started",
            measured["claim_cost_ms"],
            baseline,
        )
        b.table("Start-up to the first activity starting", measured["first_start_s"], baseline)
        b.table("Peak RSS of the daemon process alone", measured["daemon_rss_max_mb"], baseline)
        b.table("Peak RSS of the daemon plus its pool", measured["tree_rss_max_mb"], baseline)

        empty = b.make_repository(b.fresh(base, "empty"))
        startup = b.alternate(
            {
                "python -c pass (baseline)": partial(startup_seconds, [b.PYTHON, "-c", "pass"], base),
                "spoolpipe worker --until-idle, empty repository": partial(
                    startup_seconds, b.worker_command(empty, until_idle=True), base
                ),
            },
            max(runs, 10),
            "s",
        )
        b.table(
            "Start-up of worker --until-idle on an empty repository (whole process)",
            startup,
            "python -c pass (baseline)",
        )
        pillow = imports_pillow(empty)
        print(f"\nworker --until-idle on an empty repository imports Pillow: {'yes' if pillow else 'no'}")
    claim = measured["claim_cost_ms"]
    results["backlogs"] = {key: {n: f.as_json() for n, f in figs.items()} for key, figs in measured.items()}
    results["startup"] = {n: f.as_json() for n, f in startup.items()}
    results["startup_imports_pillow"] = pillow
    results["targets"] = b.targets(
        [
            b.Target(
                f"claim cost {large:,} / {small:,} waiting",
                claim[f"{large:,} waiting"].median / claim[baseline].median,
                1.5,
                False,
            ),
            # "not at all": no growth beyond the run-to-run noise of this bench, taken as 10%
            b.Target(
                f"claim cost with {large:,} in done/ / without",
                claim[f"{small:,} waiting, {large:,} in done/"].median / claim[baseline].median,
                1.1,
                False,
            ),
            b.Target(
                f"first activity starts after, {medium:,} waiting, s",
                measured["first_start_s"][f"{medium:,} waiting"].median,
                1.0,
                False,
            ),
            b.Target(
                f"first activity starts after, {large:,} waiting, s",
                measured["first_start_s"][f"{large:,} waiting"].median,
                1.0,
                False,
            ),
            b.Target(
                f"daemon RSS with {large:,} waiting, MB",
                measured["daemon_rss_max_mb"][f"{large:,} waiting"].median,
                80,
                False,
            ),
            b.Target(
                "start-up of worker --until-idle, empty repository, s",
                startup["spoolpipe worker --until-idle, empty repository"].median,
                0.2,
                False,
            ),
        ]
    )
    b.write_json(args.out, "backlog", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
