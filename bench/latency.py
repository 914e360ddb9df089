"""Pick-up latency (issue 8, target 3): from a rename into inbox/ to the processor starting, idle worker.

    python bench/latency.py [--quick] [--samples 200] [--interval 2.0] [--max-gap 1.0] [--dir DIR]

Two idle daemons (`spoolpipe worker REPO`, default pool) run side by side on two repositories: one with
notifications (scan.watch = true), one polling only (scan.watch = false); both with scan.interval-seconds =
--interval. Samples go to one daemon in blocks of 10, alternating between the two. A sample: write
inbox/.ID.tmp, read CLOCK_MONOTONIC, rename it to inbox/ID.json; the bench.stamp processor appends
CLOCK_MONOTONIC as it starts. The bench then waits for done/ID.json (the worker is idle again) and sleeps
a random 0 to --max-gap seconds, so that arrivals fall at every phase of the polling period and at every
distance from the worker's previous claim. Percentiles are nearest-rank over all samples of a mode.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as b


class IdleWorker:
    """A daemon on its own repository, started and warmed up, taking one activity at a time."""

    def __init__(self, base: Path, name: str, properties: dict[str, object]) -> None:
        work = b.fresh(base, name)
        self.repo = b.make_repository(work, properties)
        self.stamps = b.StampLog(work / "stamps.log")
        self.proc = b.start(
            b.worker_command(self.repo, name, until_idle=False), work / "worker.stderr", env=self.stamps.env()
        )
        b.wait_for(
            lambda: (self.repo / "heartbeats" / f"{name}.json").exists(),
            60,
            f"{name} to start",
            worker=self.proc,
        )
        self.serial = 0
        for _ in range(
            2 * (os.cpu_count() or 1)
        ):  # the first activities import processors in each pool process
            self.sample(timeout=60)

    def sample(self, timeout: float) -> float:
        """Seconds from the rename into inbox/ to the processor's start."""
        name = f"l{self.serial:09d}"
        self.serial += 1
        tmp = self.repo / "inbox" / f".{name}.tmp"
        tmp.write_bytes(b.activity("bench.stamp"))
        published = time.monotonic()
        os.rename(tmp, self.repo / "inbox" / f"{name}.json")
        b.wait_for(
            lambda: self.stamps.refresh() > 0 and name in self.stamps.started,
            timeout,
            name,
            poll=0.0005,
            worker=self.proc,
        )
        b.wait_for(
            lambda: (self.repo / "done" / f"{name}.json").exists(),
            timeout,
            f"done/{name}.json",
            poll=0.001,
            worker=self.proc,
        )
        return self.stamps.started[name] - published

    def close(self) -> None:
        b.stop(self.proc)


def main() -> int:
    p = b.parser(__doc__)
    p.add_argument("--samples", type=int, default=None, help="per mode (default 200; --quick 30)")
    p.add_argument(
        "--interval", type=float, default=None, help="scan.interval-seconds (default 2.0; --quick 0.5)"
    )
    p.add_argument("--max-gap", type=float, default=1.0, help="most seconds between samples (default 1.0)")
    args = p.parse_args()
    samples = args.samples or (30 if args.quick else 200)
    interval = args.interval or (0.5 if args.quick else 2.0)
    modes = {"notifications (scan.watch=true)": True, "polling only (scan.watch=false)": False}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    about = b.machine()
    with b.workdir(args.dir, "latency") as base:
        workers = {
            mode: IdleWorker(base, f"w{i}", {"scan.watch": watch, "scan.interval-seconds": interval})
            for i, (mode, watch) in enumerate(modes.items())
        }
        try:
            while min(len(v) for v in latencies.values()) < samples:
                for mode, worker in workers.items():
                    for _ in range(min(10, samples - len(latencies[mode]))):
                        latencies[mode].append(worker.sample(timeout=interval * 3 + 10))
                        time.sleep(random.uniform(0, args.max_gap))
                taken = min(len(v) for v in latencies.values())
                print(f"  {taken}/{samples} samples per mode", file=sys.stderr, flush=True)
        finally:
            for worker in workers.values():
                worker.close()
    print(
        f"\n## Pick-up latency, idle worker, {samples} samples per mode, "
        f"scan.interval-seconds = {interval:g}\n"
    )
    print("| mode | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    summary: dict[str, Any] = {}
    for mode, values in latencies.items():
        ms = [v * 1000 for v in values]
        summary[mode] = {
            "p50_ms": b.percentile(ms, 50),
            "p99_ms": b.percentile(ms, 99),
            "max_ms": max(ms),
            "ms": ms,
        }
        print(f"| {mode} | {summary[mode]['p50_ms']:.1f} | {summary[mode]['p99_ms']:.1f} | {max(ms):.1f} |")
    watch, poll = summary["notifications (scan.watch=true)"], summary["polling only (scan.watch=false)"]
    found = b.targets(
        [
            b.Target("p50 with notifications, ms", watch["p50_ms"], 5, False),
            b.Target("p99 with notifications, ms", watch["p99_ms"], 50, False),
            b.Target("p99 polling only, ms (interval + 50 ms)", poll["p99_ms"], interval * 1000 + 50, False),
        ]
    )
    results = {
        "machine": about,
        "quick": args.quick,
        "samples": samples,
        "scan_interval_seconds": interval,
        "modes": summary,
        "targets": found,
    }
    b.write_json(args.out, "latency", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
