#!/usr/bin/env python3
"""Run the photo-drop example end to end, then check that it kept its promises.

1. copy ``data/`` (a ready repository) to a fresh work folder (default
   ``./example-output/repo``; replaced on every run), and the workflow's code
   next to it, where ``processors.path = ../example_project`` finds it;
2. ``spoolpipe init`` it (creates the folders git cannot hold);
3. generate sample photos into ``REPO/photos/incoming/``;
4. ``spoolpipe submit`` one ``photo.ingest`` activity for the folder;
5. run ``python -m spoolpipe worker REPO --until-idle --worker-id example``;
6. print a summary and exit 0 only if every promised file exists.

Usage: ``python example_project/run.py [--output DIR]``. Needs spoolpipe
installed (``pip install .``); nothing is imported from the source tree.
``--write-properties`` regenerates ``data/spoolpipe.properties`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
sys.path.insert(0, str(HERE))

from photo_workflow import samples  # noqa: E402 - the line above makes it importable
from photo_workflow.layout import (  # noqa: E402
    CATALOGUE,
    CONTACT_SHEET,
    DUPLICATES,
    EXTRAS,
    MASTERS,
    QUARANTINE_DIR,
    RENDITION_SIZES,
    RENDITIONS_DIR,
)

# The example's settings, appended to spoolpipe's commented defaults in data/spoolpipe.properties.
EXAMPLE_SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        "processors",
        "photo_workflow.processors",
        "The workflow's processors (example_project/photo_workflow).",
    ),
    ("processors.path", "../example_project", "Relative to this file: REPO/../example_project."),
    ("images.roots", "photos", "Image activities read and write only below REPO/photos."),
    ("failures.handler", "photo.quarantine", "Broken or hostile photos are moved to photos/quarantine/."),
    ("concurrency.photo.index", "1", "The catalogue is rebuilt by one activity at a time per worker."),
    ("timeout.photo.renditions", "180", "Renditions of a big photo may take a while on a small board."),
    ("retry.max-attempts", "3", "Broken files fail at once (Fatal); other errors get 3 attempts."),
    ("retry.backoff-seconds", "1", "First retry after about a second."),
    ("scan.interval-seconds", "1", "Rescan the inbox every second (a demo wants quick turns)."),
    ("custom.photo.contact-sheet-columns", "6", "Read by photo.index (Settings.custom)."),
    (
        "schedule.sweep.every",
        "1m",
        "Sweep photos/incoming/ every minute (service workers fire it, --until-idle ones do not).",
    ),
    ("schedule.sweep.type", "photo.ingest", "Each tick is one photo.ingest activity..."),
    ("schedule.sweep.data", '{"folder": "incoming"}', "...for the drop folder."),
)


def render_properties() -> str:
    """``data/spoolpipe.properties``: every default, commented; the example's keys set once at the end."""
    from spoolpipe import config

    lines = config.render_defaults().splitlines()
    lines += [
        "",
        "# " + "=" * 77,
        "# The photo-drop example (example_project/README.md)",
        "# " + "=" * 77,
        "# The defaults of the keys below are commented out above, so each key is set",
        "# exactly once. Regenerate this file with: python example_project/run.py --write-properties",
    ]
    for key, value, comment in EXAMPLE_SETTINGS:
        lines += ["", f"# {comment}", f"{key} = {value}"]
    return "\n".join(lines) + "\n"


def spoolpipe(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m spoolpipe ARGS`` with this interpreter (the venv's)."""
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", *args], check=True, capture_output=capture, text=True
    )


MARKER = ".made-by-photo-example"


def prepare(output: Path) -> Path:
    """A fresh copy of data/ at OUTPUT/repo and of the workflow at OUTPUT/example_project."""
    repo, code = output / "repo", output / "example_project"
    if (repo.exists() or code.exists()) and not (output / MARKER).exists():
        raise SystemExit(f"{output} holds a repo/ or example_project/ not made by run.py; not deleting it")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(code, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("run.py replaces repo/ and example_project/ here on every run\n")
    shutil.copytree(DATA, repo)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(HERE / "photo_workflow", code / "photo_workflow", ignore=ignore)
    spoolpipe("init", str(repo))
    return repo


def run_worker(repo: Path, log: Path, timeout: float) -> int:
    with log.open("w") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spoolpipe",
                "worker",
                str(repo),
                "--until-idle",
                "--worker-id",
                "example",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            return worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.terminate()
            worker.wait(60)
            raise SystemExit(f"the worker did not finish within {timeout:.0f}s; see {log}") from None


def check(repo: Path, dropped: dict[str, samples.Sample], status: dict[str, Any]) -> list[str]:
    """Every promise of the README, as a list of what is missing (empty: all kept)."""
    photos = repo / "photos"
    problems: list[str] = []
    counts = status["counts"]
    if counts["inbox"] or counts["running"]:
        problems.append(f"work left over: {counts['inbox']} in inbox, {counts['running']} running")
    try:
        catalogue = json.loads((photos / CATALOGUE).read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"no catalogue: {exc}"]
    by_name = {entry["name"]: entry for entry in catalogue["photos"]}
    duplicates = {Path(d["source"]).name for d in catalogue["duplicates"]}
    paired = {dropped[s.note].path.name: s.path.name for s in dropped.values() if s.expect == "duplicate"}
    for sample in dropped.values():
        name = sample.path.name
        if sample.expect == "quarantine":
            for path in (name, f"{name}.report.txt"):
                if not (photos / QUARANTINE_DIR / path).is_file():
                    problems.append(f"{QUARANTINE_DIR}/{path} is missing")
        elif sample.expect == "duplicate" or name in paired:
            if sample.expect == "duplicate":  # the same picture twice: whichever came first is the photo
                pair = {name, dropped[sample.note].path.name}
                if len(pair & by_name.keys()) != 1 or len(pair & duplicates) != 1:
                    problems.append(f"{' and '.join(sorted(pair))}: expected one photo and one duplicate")
        elif name not in by_name:
            problems.append(f"{name}: not in the catalogue")
    for name, entry in by_name.items():
        if set(entry["renditions"]) != {spec["name"] for spec in RENDITION_SIZES}:
            problems.append(f"{name}: renditions {sorted(entry['renditions'])}")
        promised = [entry["master"], entry["original"], *(r["path"] for r in entry["renditions"].values())]
        promised += [entry[kind] for kind in EXTRAS]
        problems += [f"{name}: {path} is missing" for path in promised if not (photos / path).is_file()]
    if not (photos / CONTACT_SHEET).is_file():
        problems.append(f"{CONTACT_SHEET} is missing")
    leftovers = [p.name for p in (photos / "incoming").iterdir() if not p.name.startswith(".")]
    if leftovers:
        problems.append(f"still in incoming/: {', '.join(sorted(leftovers))}")
    return problems


def summary(repo: Path, status: dict[str, Any]) -> None:
    photos = repo / "photos"
    counts = status["counts"]
    print("\nrepository: " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    catalogue = json.loads((photos / CATALOGUE).read_text()) if (photos / CATALOGUE).exists() else {}
    entries = catalogue.get("photos", [])
    print(f"\nphotos: {len(entries)} (masters in {MASTERS}/, renditions in {RENDITIONS_DIR}/PHOTO/)")
    for entry in entries:
        made = ", ".join(f"{r['name']} {r['width']}x{r['height']}" for r in entry["renditions"].values())
        print(f"  {entry['name']:<22} {entry['photo']}  {made}, placeholder, square")
    dups = catalogue.get("duplicates", [])
    print(f"\nduplicates: {len(dups)} (moved to {DUPLICATES}/)")
    for dup in dups:
        print(f"  {Path(dup['source']).name:<22} same picture as {dup['original_source']}")
    reports = sorted((photos / QUARANTINE_DIR).glob("*.report.txt"))
    print(f"\nquarantined: {len(reports)} (in {QUARANTINE_DIR}/, each with NAME.report.txt)")
    for report in reports:
        reason = next(
            (
                line.split(":", 1)[1].strip()
                for line in report.read_text().splitlines()
                if line.startswith("Reason:")
            ),
            "?",
        )
        print(f"  {report.name[: -len('.report.txt')]:<22} {reason}")
    print(f"\ncatalogue: {photos / CATALOGUE}\ncontact sheet: {photos / CONTACT_SHEET}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("example-output"),
        metavar="DIR",
        help="work folder; the repository is DIR/repo, replaced on every run (default: ./example-output)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds the worker may take (default 300)"
    )
    parser.add_argument(
        "--write-properties", action="store_true", help="regenerate data/spoolpipe.properties and exit"
    )
    args = parser.parse_args(argv)
    if args.write_properties:
        (DATA / "spoolpipe.properties").write_text(render_properties())
        print(f"wrote {DATA / 'spoolpipe.properties'}")
        return 0

    started = time.monotonic()
    output = args.output.absolute()
    repo = prepare(output)
    print(f"repository: {repo}")
    dropped = samples.write_samples(repo / "photos" / "incoming")
    print(f"dropped {len(dropped)} files into {repo / 'photos' / 'incoming'}")
    activity = spoolpipe("submit", str(repo), "photo.ingest", '{"folder": "incoming"}').stdout.strip()
    print(f"submitted photo.ingest {activity} for the folder; running the worker until idle...")
    log = output / "worker.log"
    code = run_worker(repo, log, args.timeout)
    status = json.loads(spoolpipe("status", str(repo), "--json").stdout)
    summary(repo, status)
    problems = check(repo, dropped, status)
    elapsed = time.monotonic() - started
    if code != 0:
        problems.insert(0, f"the worker exited with {code}; see {log}")
    if problems:
        print(f"\nFAILED after {elapsed:.1f}s; worker log: {log}", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"\nall promised files are there ({elapsed:.1f}s); worker log: {log}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
