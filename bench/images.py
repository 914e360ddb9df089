"""Image throughput: spoolpipe's ``image.process`` (and a step pipeline) against a hand-written Pillow script.

    .venv/bin/python bench/images.py [--images 30] [--runs 5] [--dir DIR]

Every contender is a whole process, timed from its start to its exit, on the
same generated 12-megapixel JPEGs, and makes the same two files of each: a
1600 px and a 256 px JPEG (quality 85).

- ``hand``: the script people write (``HAND_SCRIPT``): ``Image.open``, ``draft``
  at the target size, ``thumbnail`` with ``reducing_gap=3``, save, then the
  256 px made from the 1600 px result; one process, one image after another.
- ``recipe pool=1`` / ``recipe pool=2``: ``spoolpipe worker REPO --until-idle``
  on pre-queued ``image.process`` activities (durability on, as by default),
  with ``pool.size`` 1 and 2.
- ``pipeline pool=1``: the same work as a step pipeline (``pipeline_processor``,
  a 1600 px step, then a 256 px step made from its result).

Contenders run alternately, ``--runs`` rounds; the medians and the ratios of
the median rates are printed, with the machine's load average before and after
(a busy machine makes every figure noisy: rerun on a quiet one). Two sets of
figures: whole processes (what a user waits for, start-up and exit included),
and the work alone (first image started to last one done), which shows the
per-image cost without the fixed cost of starting a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from benchlib import as_installed

HAND_SCRIPT = """
import os, sys, time
from pathlib import Path
from PIL import Image

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for name in sorted(os.listdir(source)):
    stem = name.rsplit(".", 1)[0]
    with Image.open(source / name) as im:
        scale = min(1600 / im.width, 1600 / im.height)
        im.draft("RGB", (round(im.width * scale), round(im.height * scale)))
        im.thumbnail((1600, 1600), reducing_gap=3)
        im.save(out / f"{stem}-1600.jpg", quality=85)
        im.thumbnail((256, 256), reducing_gap=3)
        im.save(out / f"{stem}-256.jpg", quality=85)
print(time.perf_counter() - start)  # the loop alone, for the steady-state figure
"""

PIPELINE_PROCESSORS = """
from spoolpipe.image_processors import pipeline_processor
from spoolpipe.images import save_image, thumbnail
from spoolpipe.steps import Pipeline, PipelineStep, StepResult, StepStatus, provides, requires, step


def _target(context, side):
    folder = context["roots"][0] / "out" / "pipeline"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{context['activity'].id}-{side}.jpg"


class Large(PipelineStep):
    @step("large")
    @provides("large")
    def process(self, image, context):
        large = thumbnail(image, 1600, 1600)
        save_image(large, _target(context, 1600), quality=85)
        return StepResult(StepStatus.COMPLETED, {"large": large})


class Small(PipelineStep):
    @step("small")
    @requires("large")
    @provides("small")
    def process(self, image, context):
        small = thumbnail(context["large"], 256, 256)
        saved = save_image(small, _target(context, 256), quality=85)
        return StepResult(StepStatus.COMPLETED, {"small": saved.path})


def build():
    pipeline = Pipeline()
    pipeline.add_step(Large())
    pipeline.add_step(Small())
    return pipeline


pipeline_processor("bench.renditions", build, draft=(1600, 1600))
"""


def recipe(name: str) -> dict[str, object]:
    stem = name.rsplit(".", 1)[0]
    return {
        "input": f"in/{name}",
        "outputs": [
            {
                "path": f"out/recipe/{stem}-{side}.jpg",
                "ops": [{"op": "thumbnail", "width": side, "height": side}, {"op": "save", "quality": 85}],
            }
            for side in (1600, 256)
        ],
    }


def make_photo(path: Path) -> None:
    """A 4000x3000 photo-like JPEG: gradients, shapes, and sensor-like noise (about 2 MB)."""
    import random

    from PIL import Image, ImageDraw, ImageFilter

    size = (4000, 3000)
    picture = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.radial_gradient("L").resize(size),
        ),
    )
    draw = ImageDraw.Draw(picture)
    rnd = random.Random(12)
    for _ in range(300):
        x, y, side = rnd.randrange(size[0]), rnd.randrange(size[1]), rnd.randrange(20, 400)
        draw.ellipse((x, y, x + side, y + side), fill=tuple(rnd.randrange(256) for _ in range(3)))
    noise = Image.effect_noise(size, 24).convert("RGB")
    Image.blend(picture.filter(ImageFilter.GaussianBlur(2)), noise, 0.15).save(path, quality=90)


def prepare_worker(base: Path, photos: Path, names: list[str], *, pool: int, kind: str) -> Path:
    """A fresh repository with one activity per image, queued before the worker starts."""
    from spoolpipe import config
    from spoolpipe.activity import Activity, new_id
    from spoolpipe.repository import Repository

    repo = base / f"repo-{kind}-{pool}"
    shutil.rmtree(repo, ignore_errors=True)
    Repository.create(repo, config.render_defaults())
    (repo / "spoolpipe.properties").write_text(
        textwrap.dedent(
            f"""\
            processors = bench_image_procs
            processors.path = {base}
            images.roots = {photos}
            pool.size = {pool}
            log.level = WARNING
            """
        )
    )
    writer = Repository(repo, fsync=False)
    for name in names:
        if kind == "recipe":
            writer.submit(Activity(new_id(), "image.process", recipe(name)))
        else:
            writer.submit(Activity(new_id(), "bench.renditions", {"input": f"in/{name}"}))
    return repo


def timed(command: list[str]) -> tuple[float, float, float]:
    """Whole-process seconds, the seconds of the work alone, and how many images ran at once on average.

    The work alone is what the hand script prints, or for a worker the span
    from its first done record's ``started_at`` to its last ``finished_at``;
    the average concurrency is the records' summed run times over that span.
    """
    start = time.perf_counter()
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    whole = time.perf_counter() - start
    if "worker" not in command:
        return whole, float(run.stdout.split()[-1]), 1.0
    repo = Path(command[command.index("worker") + 1])
    records = [json.loads(path.read_bytes())["spoolpipe"] for path in (repo / "done").glob("*.json")]
    spans = [
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in records
    ]
    work = (max(end for _, end in spans) - min(begin for begin, _ in spans)).total_seconds()
    return whole, work, sum((end - begin).total_seconds() for begin, end in spans) / work


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=30, help="12 Mpx JPEGs per run (default 30)")
    parser.add_argument(
        "--runs", type=int, default=5, help="rounds of all contenders (default 5, at least 5)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to run (default: a temp dir)")
    parser.add_argument(
        "--only", default="", help="comma-separated contenders to run (default: all; ratios need their pair)"
    )
    args = parser.parse_args()
    as_installed("PIL")
    if args.runs < 5:
        parser.error("--runs must be at least 5: a median of fewer says little on a shared machine")
    base = Path(tempfile.mkdtemp(prefix="spoolpipe-bench-images-", dir=args.dir))
    try:
        photos = base / "photos"
        (photos / "in").mkdir(parents=True)
        make_photo(photos / "in" / "photo-000.jpg")
        names = [f"photo-{i:03d}.jpg" for i in range(args.images)]
        for name in names[1:]:
            shutil.copyfile(photos / "in" / names[0], photos / "in" / name)
        (base / "bench_image_procs.py").write_text(PIPELINE_PROCESSORS)
        worker = [sys.executable, "-m", "spoolpipe", "worker"]
        contenders: dict[str, Callable[[], list[str]]] = {
            "hand": lambda: [
                sys.executable,
                "-c",
                HAND_SCRIPT,
                str(photos / "in"),
                str(photos / "out" / "hand"),
            ],
            "recipe pool=1": lambda: [
                *worker,
                str(prepare_worker(base, photos, names, pool=1, kind="recipe")),
                "--until-idle",
            ],
            "recipe pool=2": lambda: [
                *worker,
                str(prepare_worker(base, photos, names, pool=2, kind="recipe")),
                "--until-idle",
            ],
            "pipeline pool=1": lambda: [
                *worker,
                str(prepare_worker(base, photos, names, pool=1, kind="pipeline")),
                "--until-idle",
            ],
        }
        if args.only:
            contenders = {name: contenders[name] for name in args.only.split(",")}
        load_before = os.getloadavg()
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        steady: dict[str, list[float]] = {name: [] for name in contenders}
        overlap: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.runs + 1):  # round 0 warms the page cache and is not counted
            for name, command in contenders.items():
                whole, work, concurrency = timed(command())
                if round_:
                    seconds[name].append(whole)
                    steady[name].append(work)
                    overlap[name].append(concurrency)
        load_after = os.getloadavg()
        for repo in base.glob("repo-*"):
            left = sum(1 for _ in (repo / "inbox").iterdir()) + sum(1 for _ in (repo / "failed").iterdir())
            assert left == 0, f"{repo.name}: {left} activities not done"
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.images} images of 4000x3000 per run, {args.runs} runs, {os.cpu_count()} cores")
    print(
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
        f"after: {load_after[0]:.2f} {load_after[1]:.2f}"
    )
    for title, figures in (("whole process (start-up and exit included)", seconds), ("work alone", steady)):
        rates = {name: args.images / statistics.median(values) for name, values in figures.items()}
        print(f"\n{title}:")
        for name, values in figures.items():
            spread = ", ".join(f"{v:.2f}" for v in values)
            median = statistics.median(values)
            print(f"  {name:16s} median {median:6.2f} s  {rates[name]:6.1f} images/s   ({spread})")
        for faster, slower, target in (
            ("recipe pool=1", "hand", 0.9),
            ("pipeline pool=1", "hand", 0.9),
            ("recipe pool=2", "recipe pool=1", 1.8),
        ):
            if faster in rates and slower in rates:
                ratio = rates[faster] / rates[slower]
                print(f"  {faster} / {slower}: {ratio:.2f}  (target >= {target})")
    print("\nimages running at once on average (summed run times over the span of the work):")
    for name, values in overlap.items():
        print(f"  {name:16s} median {statistics.median(values):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
