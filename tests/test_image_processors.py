"""``image.process`` and ``pipeline_processor`` end to end: real images, real worker processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import imagefactory as factory
from harness import kill_group, leftovers, make_repository, records, run_until_idle, start_worker, submit
from spoolpipe import Activity, Context, Fatal, config
from spoolpipe.image_processors import (
    RESERVED_KEYS,
    configure_pixel_budget,
    image_roots,
    input_megapixels,
    pipeline_processor,
    process_recipe,
    recipe_megapixels,
    resolve_input,
)
from spoolpipe.images import PIXEL_BUDGET, parse_recipe
from spoolpipe.steps import Pipeline, PipelineStep, StepResult, StepStatus, provides, step
from spoolpipe.storable import storable

# Processors appended to the harness's e2e_procs module: pipelines bound with pipeline_processor.
PIPELINES = """
import os, time
from spoolpipe.image_processors import pipeline_processor
from spoolpipe.images import PIXEL_BUDGET, resize, save_image
from spoolpipe.steps import (
    Pipeline, PipelineConfig, PipelineStep, StepFatal, StepResult, StepStatus,
    fan_out, max_retries, provides, requires, step, timeout,
)

def _note(context, what):
    with open(context["roots"][0] / "effects.log", "a") as f:
        f.write(f"{context['activity'].id} {context['activity'].attempt} {os.getpid()} {what}\\n")

class Shrink(PipelineStep):
    @step("shrink")
    @fan_out("sizes", as_key="size")
    @provides("written")
    def process(self, image, context):
        size = context["size"]
        target = context["roots"][0] / "out" / f"{context['activity'].id}-{size}.png"
        target.parent.mkdir(exist_ok=True)
        saved = save_image(resize(image, size, size), target)
        return StepResult(StepStatus.COMPLETED, {"written": saved.path})

class Facts(PipelineStep):
    @step("facts")
    @provides("budget", "pid", "mode", "copy")
    def process(self, image, context):
        return StepResult(StepStatus.COMPLETED, {
            "budget": PIXEL_BUDGET.capacity, "pid": os.getpid(), "mode": image.mode, "copy": image.copy(),
        })

class Tell(PipelineStep):
    @step("tell")
    @requires("written")
    @provides("told")
    async def process(self, image, context):
        for i, path in enumerate(context["written"]):
            context["follow_up"]("t.child", {"i": i, "parent": path.name}, key=f"child-{i}")
        return StepResult(StepStatus.COMPLETED, {"told": len(context["written"])})

def build_pipe():
    pipeline = Pipeline(PipelineConfig(max_retries=0, timeout=20))
    for part in (Shrink(), Facts(), Tell()):
        pipeline.add_step(part)
    return pipeline

pipeline_processor("t.pipe", build_pipe, follow_ups=("t.child",))

class Judge(PipelineStep):
    @step("judge")
    @provides("attempt")
    @max_retries(1)
    def process(self, image, context):
        _note(context, context["mode"])
        if context["mode"] == "fatal":
            raise StepFatal("this picture can never pass")
        if context["mode"] == "flaky" and context["activity"].attempt < 2:
            raise RuntimeError("flaky step")
        if context["mode"] == "undeclared":
            context["follow_up"]("t.noop", {})
        return StepResult(StepStatus.COMPLETED, {"attempt": context["activity"].attempt})

def build_judge():
    pipeline = Pipeline(PipelineConfig(retry_delay=0.01))
    pipeline.add_step(Judge())
    return pipeline

pipeline_processor("t.judge", build_judge, follow_ups=())  # creates none

class Runaway(PipelineStep):
    @step("runaway")
    @provides("pid")
    @timeout(0.3)
    @max_retries(0)
    def process(self, image, context):
        _note(context, "start")
        if context["activity"].attempt == 1:
            time.sleep(60)  # in a thread: cannot be stopped, only killed with its process
        return StepResult(StepStatus.COMPLETED, {"pid": os.getpid()})

def build_runaway():
    pipeline = Pipeline()
    pipeline.add_step(Runaway())
    return pipeline

pipeline_processor("t.runaway", build_runaway)

class Announce(PipelineStep):
    def __init__(self):
        super().__init__()
        self.calls = 0

    @step("announce")
    @provides("announced")
    @max_retries(1)
    def process(self, image, context):
        self.calls += 1
        context["follow_up"]("t.noop", {"call": self.calls}, key=context.get("key"))
        if self.calls == 1:
            raise OSError("the share flaked after the follow-up was asked for")
        return StepResult(StepStatus.COMPLETED, {"announced": self.calls})

def build_announce():
    pipeline = Pipeline(PipelineConfig(retry_delay=0.01))
    pipeline.add_step(Announce())
    return pipeline

pipeline_processor("t.announce", build_announce, follow_ups=("t.noop",))
"""

SETTINGS = """
images.roots = photos
images.max-megapixels = 40
pool.size = 2
retry.max-attempts = 3
"""


def _recipe(**overrides: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "input": "in/cat.jpg",
        "outputs": [
            {
                "path": "out/cat-200.webp",
                "ops": [
                    {"op": "auto_orient"},
                    {"op": "resize", "width": 200},
                    {"op": "strip"},
                    {"op": "save", "quality": 80},
                ],
            },
            {
                "path": "out/thumbs/cat-96.jpg",
                "ops": [{"op": "thumbnail", "width": 96, "height": 96}, {"op": "save", "quality": 70}],
            },
            {
                "path": "out/cat-square.png",
                "ops": [{"op": "resize", "width": 64, "height": 64, "mode": "pad"}, {"op": "save"}],
            },
        ],
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One repository, every activity submitted up front, one worker run until idle."""
    base = tmp_path_factory.mktemp("images-e2e")
    repo = make_repository(base, SETTINGS, extra_processors=PIPELINES)
    photos = repo / "photos"
    (photos / "in").mkdir(parents=True)
    factory.photo(photos / "in" / "cat.jpg", (640, 480))
    factory.palette_png(photos / "in" / "sticker.png")
    outside = factory.photo(base / "outside.jpg")
    (photos / "in" / "link.jpg").symlink_to(outside)
    bad_output = _recipe()
    bad_output["outputs"][1]["path"] = str(base / "evil.jpg")
    bad_fields = _recipe()
    bad_fields["outputs"][0]["ops"][1]["width"] = -3
    bad_fields["outputs"][2]["ops"][1]["quality"] = 50
    ids = {
        "ok": submit(repo, "image.process", _recipe()),
        "bad-field": submit(repo, "image.process", bad_fields),
        "dotdot": submit(repo, "image.process", _recipe(input="../outside.jpg")),
        "absolute": submit(repo, "image.process", _recipe(input=str(outside))),
        "link": submit(repo, "image.process", _recipe(input="in/link.jpg")),
        "bad-output": submit(repo, "image.process", bad_output),
        "pipe": submit(repo, "t.pipe", {"input": "in/sticker.png", "sizes": [8, 16]}),
        "pipe-escape": submit(repo, "t.pipe", {"input": "../outside.jpg", "sizes": [8]}),
        "pipe-reserved": submit(repo, "t.pipe", {"input": "in/cat.jpg", "sizes": [8], "roots": "/"}),
        "pipe-no-key": submit(repo, "t.pipe", {"input": "in/cat.jpg"}),
        "fatal": submit(repo, "t.judge", {"input": "in/cat.jpg", "mode": "fatal"}),
        "flaky": submit(repo, "t.judge", {"input": "in/cat.jpg", "mode": "flaky"}),
        "undeclared": submit(repo, "t.judge", {"input": "in/cat.jpg", "mode": "undeclared"}),
        "announce": submit(repo, "t.announce", {"input": "in/cat.jpg"}),
        "announce-key": submit(repo, "t.announce", {"input": "in/cat.jpg", "key": "publish"}),
    }
    output = run_until_idle(repo)
    return {
        "repo": repo,
        "ids": ids,
        "done": records(repo / "done"),
        "failed": records(repo / "failed"),
        "output": output,
    }


def _reason(shared: dict[str, Any], name: str) -> str:
    record = shared["failed"][shared["ids"][name]]["spoolpipe"]
    assert record["attempts"] == 1, record  # Fatal: never retried
    return str(record["reason"])


def test_image_process_writes_the_promised_outputs(shared: dict[str, Any]) -> None:
    photos = shared["repo"] / "photos"
    result = shared["done"][shared["ids"]["ok"]]["result"]
    assert [(r["format"], r["width"], r["height"]) for r in result] == [
        ("webp", 200, 150),
        ("jpeg", 96, 72),
        ("png", 64, 64),
    ]
    for entry, name in zip(result, ["cat-200.webp", "thumbs/cat-96.jpg", "cat-square.png"], strict=True):
        path = photos / "out" / name
        assert entry["path"] == str(path.resolve())
        with Image.open(path) as image:
            assert (image.format.lower(), image.size) == (entry["format"], (entry["width"], entry["height"]))
        assert entry["bytes"] == path.stat().st_size
    assert leftovers(shared["repo"]) == {}


def test_a_bad_recipe_fails_at_once_naming_every_bad_field(shared: dict[str, Any]) -> None:
    reason = _reason(shared, "bad-field")
    assert reason.startswith("invalid recipe: ")
    assert "outputs[0].ops[1].width: expected a positive integer up to 8192, got -3" in reason
    assert "outputs[2].ops[1].quality: does not apply to png" in reason
    # the failure processor reported it too
    assert (
        "outputs[0].ops[1].width"
        in (shared["repo"] / "reports" / f"{shared['ids']['bad-field']}.txt").read_text()
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dotdot", "input: '../outside.jpg': '..' is not allowed"),
        ("absolute", "is outside the image roots"),
        ("link", "'in/link.jpg' leads outside the image roots through a symbolic link"),
        ("bad-output", "outputs[1].path: "),
    ],
)
def test_paths_escaping_the_roots_fail(shared: dict[str, Any], name: str, message: str) -> None:
    assert message in _reason(shared, name)
    assert not (shared["repo"].parent / "evil.jpg").exists()


def test_a_bound_pipeline_runs_and_its_steps_create_follow_ups(shared: dict[str, Any]) -> None:
    done = shared["done"]
    record = done[shared["ids"]["pipe"]]
    result = record["result"]
    photos = (shared["repo"] / "photos").resolve()
    assert result["input"] == str(photos / "in" / "sticker.png")
    assert (result["width"], result["height"]) == (32, 32)
    assert result["steps"] == {"shrink": "completed", "facts": "completed", "tell": "completed"}
    outputs = result["outputs"]
    # The palette-with-transparency input arrives normalised; images (copy) are left out of the summary.
    assert outputs["mode"] == "RGBA" and "copy" not in outputs and outputs["told"] == 2
    assert outputs["written"] == [str(photos / "out" / f"{shared['ids']['pipe']}-{n}.png") for n in (8, 16)]
    for path, size in zip(outputs["written"], (8, 16), strict=True):
        with Image.open(path) as image:
            assert image.size == (size, size)
    # Each pool process holds an even share of images.max-megapixels (40 over pool.size 2).
    assert outputs["budget"] == 40.0
    children = record["spoolpipe"]["follow_ups"]
    assert sorted(done[c]["result"] for c in children) == [0, 1]
    assert {done[c]["data"]["parent"] for c in children} == {Path(p).name for p in outputs["written"]}


def test_bound_pipelines_refuse_bad_activities_at_once(shared: dict[str, Any]) -> None:
    assert "input: '../outside.jpg': '..' is not allowed" in _reason(shared, "pipe-escape")
    assert "data field(s) roots are reserved" in _reason(shared, "pipe-reserved")
    assert "pipeline cannot run: step 'shrink' requires 'sizes'" in _reason(shared, "pipe-no-key")


def test_step_failures_are_fatal_or_retried_by_their_kind(shared: dict[str, Any]) -> None:
    notes = (shared["repo"] / "photos" / "effects.log").read_text().split("\n")
    # StepFatal: one step attempt, one activity attempt.
    assert "this picture can never pass" in _reason(shared, "fatal")
    assert sum(1 for line in notes if line.startswith(shared["ids"]["fatal"])) == 1
    # A follow-up of an undeclared type is a bug: not retried either.
    assert "follow-up type 't.noop' is not declared" in _reason(shared, "undeclared")
    # An ordinary exception: the step is retried (max_retries(1)), then the activity (retry.*).
    flaky = shared["done"][shared["ids"]["flaky"]]
    assert flaky["result"]["outputs"]["attempt"] == 2
    assert flaky["spoolpipe"]["attempts"] == 2
    assert sum(1 for line in notes if line.startswith(shared["ids"]["flaky"])) == 3


@pytest.mark.parametrize("name", ["announce", "announce-key"])
def test_a_step_attempt_that_failed_leaves_no_follow_up(shared: dict[str, Any], name: str) -> None:
    """A step that asked for a follow-up, then failed and was retried, kept its first attempt's one: two
    follow-ups without a key, and with one "follow-up key 'publish' used twice" failed the activity."""
    record = shared["done"][shared["ids"][name]]
    assert record["result"]["outputs"]["announced"] == 2
    [child] = record["spoolpipe"]["follow_ups"]
    assert shared["done"][child]["data"] == {"call": 2}


def test_steps_running_at_once_number_their_follow_ups_apart(tmp_path: Path) -> None:
    """Each step attempt numbered the follow-ups it asked for from the kept ones: two at once (or the
    items of a fan-out) both made number 1, and the run failed with "follow-up key '1' used twice"."""
    import asyncio

    from spoolpipe.image_processors import _FollowUps
    from spoolpipe.steps import fan_out

    class Announce(PipelineStep):
        @step("announce")
        @fan_out("sizes", as_key="size")
        @provides("announced")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            context["follow_up"]("t.noop", {"size": context["size"]})
            return StepResult(StepStatus.COMPLETED, {"announced": True})

    ctx = Context(logging.getLogger("test"), "w1", tmp_path, config.load(tmp_path).settings)
    follow_up = _FollowUps(ctx)
    pipeline = Pipeline()
    pipeline.add_step(Announce())
    result = asyncio.run(pipeline.run(Image.new("RGB", (4, 4)), {"sizes": [1, 2, 3], "follow_up": follow_up}))
    assert result.success, result
    assert sorted(f.data["size"] for f in ctx.follow_ups) == [1, 2, 3]
    assert len({f.key for f in ctx.follow_ups}) == 3


def test_a_runaway_step_thread_gets_its_process_replaced(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path, "images.roots = photos\npool.size = 1\nretry.max-attempts = 2\n", extra_processors=PIPELINES
    )
    (repo / "photos").mkdir()
    factory.photo(repo / "photos" / "cat.jpg")
    aid = submit(repo, "t.runaway", {"input": "cat.jpg"})
    run_until_idle(repo)
    record = records(repo / "done")[aid]
    assert record["spoolpipe"]["attempts"] == 2
    runs = [line.split() for line in (repo / "photos" / "effects.log").read_text().splitlines()]
    assert [r[1] for r in runs] == ["1", "2"]
    first, second = int(runs[0][2]), int(runs[1][2])
    assert first != second  # attempt 2 ran in a new pool process (pool.size = 1)
    assert record["result"]["outputs"]["pid"] == second
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # the process, and the sleeping thread with it, are gone
    log = (repo / "logs" / "activities" / f"{aid}~1.log").read_text()
    assert "step 'runaway' timed out after 0.3s" in log
    assert "ProcessTainted" in log and "replacing the process" in log
    assert leftovers(repo) == {}


# --------------------------------------------------------------------------- in-process details


def _context(tmp_path: Path, properties: str) -> Context:
    (tmp_path / "spoolpipe.properties").write_text(properties)
    settings = config.load(tmp_path, cpu_count=4).settings
    return Context(logging.getLogger("test"), "w", tmp_path, settings)


def test_image_process_without_roots_says_to_set_them(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "")
    with pytest.raises(Fatal, match=r"no image roots configured: set images\.roots"):
        process_recipe(Activity("a", "image.process", _recipe()), ctx)


def test_each_pool_process_budget_is_the_whole_cap(tmp_path: Path) -> None:
    # Across pool processes the worker admits image work by estimate (test_worker.py);
    # inside one activity the process budget bounds the fan-out threads with the same cap.
    before = PIXEL_BUDGET.capacity
    try:
        ctx = _context(tmp_path, "images.max-megapixels = 100\npool.size = 4\n")
        assert configure_pixel_budget(ctx.settings) == 100.0
        assert PIXEL_BUDGET.capacity == 100.0
        automatic = replace(ctx.settings, images_max_megapixels=0.0)
        assert configure_pixel_budget(automatic) > 0  # 0 means automatic
    finally:
        PIXEL_BUDGET.capacity = before


def test_input_megapixels_reads_the_header(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    factory.photo(root / "a.png")
    settings = _context(tmp_path, f"images.roots = {root}\n").settings
    with Image.open(root / "a.png") as im:
        expected = 3 * im.width * im.height / 1e6
    assert input_megapixels(Activity("a", "image.process", {"input": "a.png"}), settings) == expected


def test_resolving_paths_reuses_the_recipe_confinement(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    factory.photo(root / "sub" / "a.png")
    assert resolve_input("sub/a.png", [root]) == (root / "sub" / "a.png").resolve()
    assert resolve_input("sub", [root], kind="folder") == (root / "sub").resolve()
    with pytest.raises(Fatal, match=r"^file: 'sub/\.\./sub/a\.png': '\.\.' is not allowed$"):
        resolve_input("sub/../sub/a.png", [root], field="file")
    with pytest.raises(Fatal, match="is not a folder"):
        resolve_input("sub/a.png", [root], kind="folder")
    with pytest.raises(Fatal, match="is outside the image roots"):
        resolve_input(str(tmp_path), [root], kind="folder")
    (root / "away").symlink_to(tmp_path)
    with pytest.raises(Fatal, match="through a symbolic link"):
        resolve_input("away", [root], kind="folder")


def test_activity_files_from_the_docs_are_valid_recipes(tmp_path: Path) -> None:
    """The activity file docs/images.md tells people to cp into the inbox is a valid recipe."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "images.md").read_text()
    heredoc = docs.split("cat > cat-web.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    activity = json.loads(heredoc)
    assert activity["type"] == "image.process"
    root = tmp_path / "photos"
    (root / "incoming").mkdir(parents=True)
    factory.photo(root / "incoming" / "cat.jpg")
    recipe = parse_recipe(activity["data"], [root])
    assert recipe.input == (root / "incoming" / "cat.jpg").resolve()


def test_the_properties_example_in_the_docs_sets_the_roots(tmp_path: Path) -> None:
    """The ``images.roots`` line docs/images.md tells people to write names REPO/photos."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "images.md").read_text()
    block = docs.split("```properties\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "photos").mkdir()
    settings = _context(tmp_path, block + "\n").settings
    assert settings.images_roots == (tmp_path / "photos",)


def test_a_missing_image_root_fails_the_activity_at_once_naming_it(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "images.roots = photos, gone\nretry.max-attempts = 5\npool.size = 1\n")
    (repo / "photos" / "in").mkdir(parents=True)
    factory.photo(repo / "photos" / "in" / "cat.jpg")
    aid = submit(repo, "image.process", _recipe())
    run_until_idle(repo)
    record = records(repo / "failed")[aid]["spoolpipe"]
    assert record["attempts"] == 1, record  # Fatal: not retried while the root stays missing
    assert f"image root {repo / 'gone'} does not exist" in record["reason"]
    assert f"(check images.roots at {repo / 'spoolpipe.properties'}:" in record["reason"]


def test_a_missing_image_root_set_in_a_worker_file_names_that_file(tmp_path: Path) -> None:
    """It said "check images.roots in spoolpipe.properties", which did not set it."""
    repo = make_repository(tmp_path, "pool.size = 1\n")
    (repo / "workers" / "w1.properties").write_text("\nimages.roots = nothere\n")
    aid = submit(repo, "image.process", _recipe())
    run_until_idle(repo)
    reason = records(repo / "failed")[aid]["spoolpipe"]["reason"]
    assert f"(check images.roots at {repo / 'workers' / 'w1.properties'}:2)" in reason, reason


def test_an_image_root_that_is_a_file_is_fatal_naming_it(tmp_path: Path) -> None:
    (tmp_path / "photos").write_text("not a folder")
    ctx = _context(tmp_path, "images.roots = photos\n")
    with pytest.raises(Fatal, match=rf"image root {tmp_path / 'photos'} is not a folder"):
        image_roots(ctx.settings)


PIL_PROBE = """
import sys
from spoolpipe import processor

@processor("t.pil-probe")
def pil_probe(activity, ctx):
    return "PIL" in sys.modules
"""


def test_a_worker_with_no_image_work_never_imports_pillow(tmp_path: Path) -> None:
    """Start-up must not pay for Pillow when no image work comes: not in the daemon, not in the pool."""
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=PIL_PROBE)
    aid = submit(repo, "t.pil-probe")
    proc = start_worker(repo, "w1", "--until-idle", env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert records(repo / "done")[aid]["result"] is False  # asked inside the pool process
    output = (tmp_path / "worker-w1.stderr").read_text()
    assert ", image.process, " in output  # the built-in image processors did register
    # Import statements run by any process of the worker, daemon included, as -X importtime logs them.
    imported = {
        line.rsplit("|", 1)[1].strip() for line in output.splitlines() if line.startswith("import time:")
    }
    assert "spoolpipe.worker" in imported
    assert sorted(m for m in imported if m == "PIL" or m.startswith("PIL.")) == []


def test_an_image_process_estimate_counts_the_size_the_jpeg_is_decoded_to(tmp_path: Path) -> None:
    """Admission counts what a run holds: a recipe that only makes thumbnails decodes its JPEG small."""
    root = tmp_path / "root"
    root.mkdir()
    factory.photo(root / "a.jpg", (640, 480))
    settings = _context(tmp_path, f"images.roots = {root}\n").settings
    thumbnail = {"path": "t.jpg", "ops": [{"op": "thumbnail", "width": 100}, {"op": "save"}]}
    whole = {"path": "w.jpg", "ops": [{"op": "save"}]}
    small = Activity("a", "image.process", {"input": "a.jpg", "outputs": [thumbnail]})
    full = Activity("b", "image.process", {"input": "a.jpg", "outputs": [thumbnail, whole]})
    assert recipe_megapixels(small, settings) == 3 * 160 * 120 / 1e6  # decoded at 1/4 scale
    assert recipe_megapixels(full, settings) == 3 * 640 * 480 / 1e6


def test_an_estimate_reads_the_header_only_not_every_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon estimates before it claims, on its main thread: counting the frames of a GIF of
    millions of them took seconds there, and stalled SIGTERM, heartbeats and every dispatch."""
    from PIL import GifImagePlugin

    root = tmp_path / "root"
    root.mkdir()
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    frames[0].save(root / "a.gif", save_all=True, append_images=frames[1:])

    def counted(self: object) -> int:
        raise AssertionError("the estimate walked the frames")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(counted))
    settings = _context(tmp_path, f"images.roots = {root}\n").settings
    recipe = {"input": "a.gif", "outputs": [{"path": "t.png", "ops": [{"op": "save"}]}]}
    assert recipe_megapixels(Activity("a", "image.process", recipe), settings) == 3 * 40 * 30 / 1e6


class _Size(PipelineStep):
    @step("size")
    @provides("size")
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        return StepResult(StepStatus.COMPLETED, {"size": list(image.size)})


def _size_pipeline() -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_step(_Size())
    return pipeline


def test_a_pipeline_with_a_draft_box_gets_its_jpeg_shrunk_on_load(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    factory.photo(root / "cat.jpg", (640, 480))
    ctx = _context(tmp_path, "images.roots = photos\n")
    drafted = pipeline_processor("t.drafted-size", _size_pipeline, draft=(100, 100))
    whole = pipeline_processor("t.whole-size", _size_pipeline)
    activity = Activity("a", "t.drafted-size", {"input": "cat.jpg"})
    # Decoded at 1/4: 160x120 still covers the 100x75 the box asks for; without a box, every pixel.
    assert drafted(activity, ctx)["outputs"]["size"] == [160, 120]
    assert whole(activity, ctx)["outputs"]["size"] == [640, 480]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


class _Deep(PipelineStep):
    @step("deep")
    @provides("deep", "deeper", "deepest", "loop", "flat")
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        return StepResult(
            StepStatus.COMPLETED,
            {"deep": _nested(98), "deeper": _nested(99), "deepest": _nested(5000), "loop": loop, "flat": 1},
        )


def _deep_pipeline() -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_step(_Deep())
    return pipeline


def test_step_outputs_nested_deeper_than_a_result_may_be_are_left_out(tmp_path: Path) -> None:
    """_jsonable recursed without bound: an output 5,000 deep or a dict holding itself raised
    RecursionError and failed the finished activity."""
    root = tmp_path / "photos"
    root.mkdir()
    factory.photo(root / "cat.jpg", (64, 48))
    ctx = _context(tmp_path, "images.roots = photos\n")
    deep = pipeline_processor("t.deep", _deep_pipeline)
    result = deep(Activity("a", "t.deep", {"input": "cat.jpg"}), ctx)
    # The result nests 100 levels at most (docs/repository-format.md): it, "outputs", then the value.
    assert sorted(result["outputs"]) == ["deep", "flat"]
    assert result["outputs"]["deep"] == _nested(98)
    assert result["steps"] == {"deep": "completed"}
    storable(result, "result", limit=1 << 20, limit_key="limits.result-bytes")


def test_the_image_key_is_reserved_and_a_daemon_needs_no_pipeline_machinery() -> None:
    """RESERVED_KEYS spells steps.IMAGE_KEY out, so that importing the built-in image processors (which
    every worker does) does not import steps (and with it asyncio)."""
    from spoolpipe.steps import IMAGE_KEY

    assert IMAGE_KEY in RESERVED_KEYS
    probe = "import sys, spoolpipe.image_processors; print('spoolpipe.steps' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_the_next_attempt_replaces_the_temporary_file_a_killed_one_left_beside_an_output(
    tmp_path: Path,
) -> None:
    """An attempt killed while writing an output left .NAME.RANDOM.tmp: a new random name at every
    retry, so orphans of up to an image's size piled up in the user's folder."""
    repo = make_repository(tmp_path, "images.roots = photos\npool.size = 1\n")
    (repo / "photos" / "in").mkdir(parents=True)
    (repo / "photos" / "out").mkdir()
    factory.photo(repo / "photos" / "in" / "cat.jpg")
    aid = "IMG1"
    left = repo / "photos" / "out" / f".cat-200.webp.{aid}.tmp"  # as a kill -9 mid-write leaves it
    left.write_bytes(b"half an image")
    submit(repo, "image.process", _recipe(), id=aid)
    run_until_idle(repo)
    assert aid in records(repo / "done")
    assert sorted(os.listdir(repo / "photos" / "out")) == ["cat-200.webp", "cat-square.png", "thumbs"]
    assert os.listdir(repo / "photos" / "out" / "thumbs") == ["cat-96.jpg"]
