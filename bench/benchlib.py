"""What every bench/ script shares: real repositories driven only through spoolpipe's CLI and the documented
repository format (docs/repository-format.md), whole-process timing, contenders run alternately, medians,
ratios against a baseline from the same run, and a JSON of every figure.

Nothing here imports spoolpipe: the worker is exercised exactly as a user runs it, so these scripts keep
working whatever its internals become.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
STAMPS_ENV = "SPOOLPIPE_BENCH_STAMPS"
"""Environment variable naming the file the bench.stamp processor appends to (inherited by the pool)."""

PROCESSORS = '''
"""Processors of the bench/ scripts (written by bench/benchlib.py)."""
import os, time
from spoolpipe import processor

_stamps = None

@processor("bench.noop")
def noop(activity, ctx):
    return None

@processor("bench.stamp")
def stamp(activity, ctx):
    """Append "ID MONOTONIC" as the processor starts: CLOCK_MONOTONIC is one clock for every process here,
    and one O_APPEND write per line keeps lines from several pool processes whole."""
    global _stamps
    now = time.monotonic()
    if _stamps is None:
        _stamps = os.open(os.environ["SPOOLPIPE_BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_stamps, f"{activity.id} {now:.6f}\\n".encode())
    return None

@processor("bench.cpu")
def cpu(activity, ctx):
    """A fixed amount of pure-Python work, so that only the number of cores decides the rate."""
    total = 0
    for i in range(activity.data["loops"]):
        total += i * i
    return total % 7
'''

# ----------------------------------------------------------------------------- command line and output


def as_installed(*packages: str) -> None:
    """Compile the packages' bytecode, as `pip install` does, so no timed process compiles source.

    A source checkout (an editable install) gets its bytecode written at the first import, unless
    PYTHONDONTWRITEBYTECODE is set, as it is on some CI machines: then every timed start compiled
    spoolpipe's modules again (about 35 ms here) while the contenders, installed by pip, did not.
    A package that is not installed is skipped (its contender fails on its own)."""
    for package in ("spoolpipe", "huey", "kombu", *packages):
        spec = importlib.util.find_spec(package)  # finds without importing
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, quiet=1)


def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every script takes; scripts add their own. Compiles the contenders' bytecode."""
    as_installed()
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small smoke run (minutes, no 100k-scale work)")
    p.add_argument(
        "--runs", type=int, default=None, help="runs per contender (default 5; the median is kept)"
    )
    p.add_argument("--dir", type=Path, default=None, help="where to build repositories (default: a temp dir)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results",
        help="where to write the JSON (and PNG)",
    )
    return p


def machine() -> dict[str, Any]:
    """What the reader of a result needs to judge it."""
    version = subprocess.run(
        [PYTHON, "-m", "spoolpipe", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit or None,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "spoolpipe": version,
        "loadavg_at_start": list(os.getloadavg()),
    }


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    payload["machine"]["loadavg_at_end"] = list(os.getloadavg())
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


@contextmanager
def workdir(parent: Path | None, name: str) -> Iterator[Path]:
    """A scratch directory on the disk under test, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=f"spoolpipe-bench-{name}-", dir=parent))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fresh(base: Path, name: str) -> Path:
    """An empty directory base/name, removing what an earlier run left there."""
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------- statistics and reports


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: a value that was really observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Figure:
    """One measured quantity over several runs."""

    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "runs": self.values}


def alternate(contenders: Mapping[str, Callable[[], float]], runs: int, unit: str) -> dict[str, Figure]:
    """Run every contender once per round, rotating the order each round so load drifts hit all alike."""
    names = list(contenders)
    figures = {name: Figure(unit) for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            value = contenders[name]()
            figures[name].values.append(value)
            print(f"  run {r + 1}/{runs}  {name:44s} {value:12.4g} {unit}", file=sys.stderr, flush=True)
    return figures


def table(title: str, figures: Mapping[str, Figure], baseline: str | None = None) -> None:
    """Median, spread and ratio to the baseline's median for each contender."""
    width = max(len(name) for name in [*figures, "contender"])
    print(f"\n## {title}\n")
    print(f"| {'contender':{width}s} | {'median':>12s} | {'min':>10s} | {'max':>10s} | ratio |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 12}|{'-' * 12}|-------|")
    for name, fig in figures.items():
        ratio = f"{fig.median / figures[baseline].median:5.2f}" if baseline else "    -"
        low, high = min(fig.values), max(fig.values)
        print(f"| {name:{width}s} | {fig.median:12.4g} | {low:10.4g} | {high:10.4g} | {ratio} |")
    print(f"\n(unit: {next(iter(figures.values())).unit}; ratio against: {baseline or 'none'})")


@dataclass
class Target:
    """One line of issue 8: a measured value against its bound."""

    name: str
    value: float
    bound: float
    at_least: bool

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "bound": self.bound, "at_least": self.at_least, "met": self.met}


def targets(found: Sequence[Target]) -> dict[str, Any]:
    print("\n## Targets\n")
    for t in found:
        sign = ">=" if t.at_least else "<="
        print(f"- {t.name}: {t.value:.4g} (target {sign} {t.bound:g}) {'MET' if t.met else 'MISSED'}")
    return {t.name: t.as_json() for t in found}


# ----------------------------------------------------------------------------- repositories (CLI + format)


def make_repository(base: Path, properties: Mapping[str, object] | None = None) -> Path:
    """`spoolpipe init` a repository at base/repo and append the bench processors and `properties`
    ({"scan.watch": False} is scan.watch = false) to its spoolpipe.properties (a later line wins)."""
    repo = base / "repo"
    subprocess.run([PYTHON, "-m", "spoolpipe", "init", str(repo)], check=True, stdout=subprocess.DEVNULL)
    code = base / "processors"
    code.mkdir(exist_ok=True)
    (code / "bench_processors.py").write_text(PROCESSORS)
    lines = ["", "# bench/benchlib.py", "processors = bench_processors", f"processors.path = {code}"]
    for key, value in (properties or {}).items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    with open(repo / "spoolpipe.properties", "a") as f:
        f.write("\n".join(lines) + "\n")
    return repo


def ids(prefix: str, start: int, count: int) -> list[str]:
    """Activity ids that sort in submission order."""
    return [f"{prefix}{i:09d}" for i in range(start, start + count)]


def enqueue(inbox: Path, names: Sequence[str], body: bytes) -> None:
    """Publish one file per name the documented way (write inbox/.NAME.tmp, rename to inbox/NAME.json).
    Not flushed: this is set-up, not what is measured."""
    for name in names:
        tmp = inbox / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, inbox / f"{name}.json")


def activity(type_: str, data: Mapping[str, object] | None = None) -> bytes:
    return json.dumps({"type": type_, "data": dict(data or {})}).encode()


def entries(directory: Path) -> int:
    """Entries of a directory that are not hidden (temp files)."""
    with os.scandir(directory) as it:
        return sum(1 for e in it if not e.name.startswith("."))


def worker_command(
    repo: Path, worker_id: str = "bench", *, until_idle: bool, cpu: int | None = None
) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    idle = ["--until-idle"] if until_idle else []
    return [*pin, PYTHON, "-m", "spoolpipe", "worker", str(repo), "--worker-id", worker_id, *idle]


def start(
    command: Sequence[str], stderr: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process whose stderr goes to a file (a pipe nobody reads would block a chatty worker)."""
    with open(stderr, "wb") as err:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)


def run_whole(
    commands: Sequence[Sequence[str]], logs: Path, *, cwd: Path | None = None, timeout: float = 900
) -> float:
    """Start the commands together and return the seconds until the last one exits (each must exit 0);
    their stderr goes to logs/0.stderr, logs/1.stderr..."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    procs = [start(c, logs / f"{i}.stderr", cwd=cwd) for i, c in enumerate(commands)]
    for proc in procs:
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
    elapsed = time.perf_counter() - started
    failures = [
        f"{' '.join(c)} exited {p.returncode}: {(logs / f'{i}.stderr').read_text(errors='replace')[-2000:]}"
        for i, (p, c) in enumerate(zip(procs, commands, strict=True))
        if p.returncode != 0
    ]
    if failures:
        raise RuntimeError("\n".join(failures))
    return elapsed


def stop(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """SIGTERM (the documented way to stop a worker) and wait for it to exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    poll: float = 0.01,
    worker: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until predicate() holds; fail early if `worker` exits meanwhile (its stderr file says why)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker (pid {worker.pid}) exited {worker.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class StampLog:
    """Reads what the bench.stamp processor appends: when each activity's processor started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._offset = 0
        self._partial = b""
        self.started: dict[str, float] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ, STAMPS_ENV: str(self.path)}

    def refresh(self) -> int:
        """Read lines appended since the last call; return how many activities have started."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            name, stamp = line.decode().split(" ")
            self.started.setdefault(name, float(stamp))
        return len(self.started)

    def ordered(self) -> list[float]:
        return sorted(self.started.values())


# ----------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of pid alone, RSS summed over pid and all its descendants), in bytes."""
    tree = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss(p)
        todo.extend(tree.get(p, ()))
    return _rss(pid), total


@dataclass
class RssSample:
    at: float
    daemon: int
    tree: int


class RssSampler:
    """Samples tree_rss(pid) at once, then every `interval` seconds on a thread, and once more on close()
    (call it while the process still runs), so even a run shorter than `interval` has samples."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.samples: list[RssSample] = []
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        daemon, tree = tree_rss(self._pid)
        if daemon:
            self.samples.append(RssSample(time.monotonic(), daemon, tree))

    def _run(self, interval: float) -> None:
        self._sample()
        while not self._stop.wait(interval):
            self._sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if not self.samples:
            raise RuntimeError(f"process {self._pid} was gone before its memory could be sampled")

    def at(self, moment: float) -> RssSample:
        """The sample nearest to `moment`."""
        return min(self.samples, key=lambda s: abs(s.at - moment))


MB = 1024 * 1024
