"""Stays fast (issue 8, target 2): one worker lifetime of --activities no-op activities (default 100,000).

    python bench/stays_fast.py [--quick] [--runs 5] [--activities 100000] [--inbox-max 2000] [--dir DIR]

The inbox is fed in batches, never holding more than --inbox-max files (topped up when it falls below
half), so what is measured is the worker's age, not the backlog (bench/backlog.py measures that). The feed
goes on until --activities have started, so the last 10% run under the same feed as the first. The worker
is a plain daemon (`spoolpipe worker REPO`, durability on, default pool), then stopped with SIGTERM; the
bench checks that every started activity is in done/ or back in inbox/.

Each processor start is stamped (bench.stamp: one appended line). The rate over the last 10% of starts is
compared with the rate over the first 10% (the baseline, same run). The RSS of the daemon plus every
process below it (its pool) is sampled every 0.25 s; growth is the sample at the last start minus the
sample at the end of the first 10%, so that start-up and warm-up do not count as growth.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import benchlib as b


def feed(inbox: Path, inbox_max: int, stop: threading.Event) -> None:
    """Keep between inbox_max/2 and inbox_max activities waiting until told to stop. The feed goes on past
    the activities measured, so the last 10% run under the same feed as the first."""
    body = b.activity("bench.stamp")
    published = 0
    while not stop.is_set():
        waiting = b.entries(inbox)
        if waiting < inbox_max // 2:
            b.enqueue(inbox, b.ids("s", published, inbox_max - waiting), body)
            published += inbox_max - waiting
        time.sleep(0.005)


def lost(repo: Path, started: Iterable[str]) -> list[str]:
    """Started activities that are neither in done/ nor back in inbox/ (released by SIGTERM)."""
    waiting = {name.split("~")[0].removesuffix(".json") for name in os.listdir(repo / "inbox")}
    return [n for n in started if n not in waiting and not (repo / "done" / f"{n}.json").exists()]


def one_lifetime(base: Path, total: int, inbox_max: int) -> dict[str, float]:
    work = b.fresh(base, "lifetime")
    repo = b.make_repository(work)
    stamps = b.StampLog(work / "stamps.log")
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(repo / "inbox", inbox_max, stop), daemon=True)
    proc = b.start(b.worker_command(repo, until_idle=False), work / "worker.stderr", env=stamps.env())
    sampler = b.RssSampler(proc.pid)
    feeder.start()
    try:
        b.wait_for(lambda: stamps.refresh() >= total, 3600, f"{total:,} activities", poll=0.2, worker=proc)
    finally:
        stop.set()
        feeder.join()
        sampler.close()
        b.stop(proc)
    stamps.refresh()
    missing = lost(repo, stamps.started)
    if missing:
        raise RuntimeError(f"{len(missing)} started activities are neither done nor waiting: {missing[:5]}")
    starts = stamps.ordered()[:total]
    tenth = total // 10
    first_rate = tenth / (starts[tenth] - starts[0])
    second_rate = tenth / (starts[2 * tenth] - starts[tenth])
    last_rate = tenth / (starts[-1] - starts[-1 - tenth])
    warm, end = sampler.at(starts[tenth]), sampler.at(starts[-1])
    return {
        "first_10pct_rate": first_rate,
        "last_10pct_rate": last_rate,
        "last_over_first": last_rate / first_rate,
        "second_10pct_rate": second_rate,
        "last_over_second": last_rate / second_rate,
        "tree_rss_after_first_10pct_mb": warm.tree / b.MB,
        "tree_rss_at_end_mb": end.tree / b.MB,
        "tree_rss_growth_mb": (end.tree - warm.tree) / b.MB,
        "daemon_rss_growth_mb": (end.daemon - warm.daemon) / b.MB,
        "tree_rss_max_mb": max(s.tree for s in sampler.samples) / b.MB,
    }


def main() -> int:
    p = b.parser(__doc__)
    p.add_argument(
        "--activities", type=int, default=None, help="per lifetime (default 100,000; --quick 10,000)"
    )
    p.add_argument("--inbox-max", type=int, default=2000, help="most activities waiting at once")
    args = p.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    total = args.activities or (10_000 if args.quick else 100_000)
    results: dict[str, Any] = {
        "machine": b.machine(),
        "quick": args.quick,
        "runs": runs,
        "activities": total,
        "inbox_max": args.inbox_max,
    }
    lifetimes: list[dict[str, float]] = []
    with b.workdir(args.dir, "stays-fast") as base:
        for r in range(runs):
            lifetimes.append(one_lifetime(base, total, args.inbox_max))
            print(f"  run {r + 1}/{runs}: {lifetimes[-1]}", file=sys.stderr, flush=True)
    figures = {
        "rate over the first 10% (baseline)": b.Figure(
            "activities/s", [x["first_10pct_rate"] for x in lifetimes]
        ),
        "rate over the second 10% (past warm-up)": b.Figure(
            "activities/s", [x["second_10pct_rate"] for x in lifetimes]
        ),
        "rate over the last 10%": b.Figure("activities/s", [x["last_10pct_rate"] for x in lifetimes]),
    }
    b.table(
        f"One lifetime of {total:,} no-op activities, inbox fed up to {args.inbox_max:,}",
        figures,
        "rate over the first 10% (baseline)",
    )
    memory = {
        key: b.Figure("MB", [x[key] for x in lifetimes])
        for key in (
            "tree_rss_after_first_10pct_mb",
            "tree_rss_at_end_mb",
            "tree_rss_growth_mb",
            "daemon_rss_growth_mb",
            "tree_rss_max_mb",
        )
    }
    b.table("Memory of the daemon and its pool (RSS summed over the process tree)", memory)
    ratio = b.Figure("x", [x["last_over_first"] for x in lifetimes])
    results["lifetimes"] = lifetimes
    past_warmup = b.Figure("x", [x["last_over_second"] for x in lifetimes])
    summary = {**figures, **memory, "last_over_first": ratio, "last_over_second": past_warmup}
    results["summary"] = {name: f.as_json() for name, f in summary.items()}
    print(f"\nlast 10% / second 10% (warm-up excluded, not a target): {past_warmup.median:.3g}")
    results["targets"] = b.targets(
        [
            b.Target("last-10% rate / first-10% rate (median of per-run ratios)", ratio.median, 0.9, True),
            b.Target("RSS growth of daemon + pool, MB", memory["tree_rss_growth_mb"].median, 10, False),
        ]
    )
    b.write_json(args.out, "stays_fast", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
