"""The photo-drop example (example_project/run.py) keeps the promises of its README."""

from __future__ import annotations

import importlib.util
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

import imagefactory as factory  # puts example_project/ on sys.path, for photo_workflow

# isort: split
from photo_workflow import ingest, quarantine

from spoolpipe import Activity, Context, Fatal, config
from spoolpipe.processor import registered

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "example_project" / "run.py"
RENDITIONS = {
    "large": ("JPEG", 1600),
    "web": ("WEBP", 800),
    "thumb-320": ("JPEG", 320),
    "thumb-160": ("JPEG", 160),
}
ORIENTATIONS = [f"orientation-{n}.jpg" for n in range(1, 9)]


def near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("example") / "out"
    done = subprocess.run(
        [sys.executable, str(RUN), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path_factory.getbasetemp(),
    )
    repo = output / "repo"
    assert done.returncode == 0, done.stdout + done.stderr + (output / "worker.log").read_text()
    photos = repo / "photos"
    catalogue = json.loads((photos / "library" / "catalogue.json").read_text())
    status = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "status", str(repo), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        "stdout": done.stdout,
        "repo": repo,
        "photos": photos,
        "catalogue": catalogue,
        "by_name": {entry["name"]: entry for entry in catalogue["photos"]},
        "status": json.loads(status.stdout),
    }


def test_every_photo_gets_a_master_renditions_placeholder_and_square(run: dict[str, Any]) -> None:
    photos, by_name = run["photos"], run["by_name"]
    expected = {*ORIENTATIONS, "poster-cmyk.jpg", "sticker.png", "scan-16bit.png", "logo.png"}
    expected |= {"animation.gif", "evening.webp"}
    assert expected <= by_name.keys()
    assert len(by_name) == len(expected) + 2  # plus one of each duplicate pair
    for name, entry in by_name.items():
        with Image.open(photos / entry["master"]) as master:
            assert master.size == (entry["width"], entry["height"])
            assert "exif" not in master.info  # stripped
        assert (photos / entry["original"]).is_file()
        assert set(entry["renditions"]) == set(RENDITIONS)
        for kind, (fmt, box) in RENDITIONS.items():
            made = entry["renditions"][kind]
            with Image.open(photos / made["path"]) as image:
                assert image.format == fmt, (name, kind)
                assert image.size == (made["width"], made["height"])
                # fits the box, never enlarged
                assert max(image.size) == min(box, max(entry["width"], entry["height"])), (name, kind)
        with Image.open(photos / entry["placeholder"]) as placeholder:
            assert placeholder.format == "WEBP" and max(placeholder.size) <= 16
        with Image.open(photos / entry["square"]) as square:
            assert square.format == "JPEG" and square.width == square.height
    cmyk = by_name["poster-cmyk.jpg"]
    with Image.open(photos / cmyk["master"]) as master:
        assert master.mode == "RGB"
    with Image.open(photos / by_name["sticker.png"]["master"]) as master:
        assert master.format == "PNG" and master.mode == "RGBA"  # transparency kept
    with Image.open(photos / by_name["scan-16bit.png"]["master"]) as master:
        assert master.mode == "L"
    assert by_name["animation.gif"]["renditions"]["large"]["width"] == 120


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_every_exif_orientation_comes_out_upright(run: dict[str, Any], name: str) -> None:
    entry = run["by_name"][name]
    made = entry["renditions"]
    for path in (entry["master"], made["large"]["path"], made["web"]["path"], made["thumb-160"]["path"]):
        with Image.open(run["photos"] / path) as image:
            rgb = image.convert("RGB")
        width, height = rgb.size
        assert width > height, (name, path)  # landscape, as the picture was taken
        inset = max(2, width // 60)
        assert near(rgb.getpixel((inset, inset)), factory.RED), (name, path)
        assert near(rgb.getpixel((width - 1 - inset, inset)), factory.BLUE), (name, path)
        assert near(rgb.getpixel((inset, height - 1 - inset)), factory.GREY), (name, path)


def test_duplicates_are_recorded_once_and_not_processed_again(run: dict[str, Any]) -> None:
    photos, by_name = run["photos"], run["by_name"]
    recorded = {Path(d["source"]).name: d for d in run["catalogue"]["duplicates"]}
    for pair in ({"harbour.jpg", "harbour (copy).jpg"}, {"graph.png", "graph-edited.png"}):
        (kept,) = pair & by_name.keys()
        (dropped,) = pair & recorded.keys()
        record = recorded[dropped]
        assert record["duplicate_of"] == by_name[kept]["photo"]
        assert (photos / record["moved_to"]).is_file()
        assert json.loads((photos / f"{record['moved_to']}.json").read_text()) == record
    assert len(list((photos / "originals").iterdir())) == len(by_name)
    assert sorted(p.name for p in (photos / "library" / "masters").iterdir()) == sorted(
        Path(e["master"]).name for e in by_name.values()
    )


def test_broken_and_hostile_files_end_in_quarantine_with_a_report(run: dict[str, Any]) -> None:
    quarantine = run["photos"] / "quarantine"
    reasons = {
        "truncated.jpg": "truncated",
        "bomb.png": "decompression bomb",
        "huge-header.png": "decompression bomb",
        "not-a-photo.jpg": "not an image",
    }
    for name, reason in reasons.items():
        assert (quarantine / name).is_file(), name
        report = (quarantine / f"{name}.report.txt").read_text()
        assert "type photo.ingest failed" in report and reason in report, report
        assert f'"file": "incoming/{name}"' in report
        assert f"{name[:10]}" in run["stdout"]
    bomb = factory.bomb_png(run["repo"].parent / "bomb-again.png")
    assert (quarantine / "bomb.png").read_bytes() == bomb.read_bytes()  # moved untouched
    assert run["status"]["counts"]["failed"] == len(reasons)
    assert [p.name for p in (run["photos"] / "incoming").iterdir()] == [".gitkeep"]


def test_the_catalogue_contact_sheet_and_status_at_the_end(run: dict[str, Any]) -> None:
    counts = run["status"]["counts"]
    assert counts["inbox"] == 0 and counts["running"] == 0 and counts["invalid"] == 0
    assert run["status"]["workers"] == []  # the worker exited (--until-idle) and cleaned up
    photos = len(run["by_name"])
    with Image.open(run["photos"] / "library" / "contact-sheet.jpg") as sheet:
        columns = 6
        assert sheet.format == "JPEG"
        assert sheet.size == (columns * 180, -(-photos // columns) * 200)
    assert "all promised files are there" in run["stdout"]
    assert f"photos: {photos}" in run["stdout"]


def test_data_holds_the_defaults_and_the_example_settings_once() -> None:
    spec = importlib.util.spec_from_file_location("example_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    properties = ROOT / "data" / "spoolpipe.properties"
    assert properties.read_text() == module.render_properties(), (
        "data/spoolpipe.properties is stale: python example_project/run.py --write-properties"
    )
    loaded = config.load(ROOT / "data")
    assert loaded.warnings == ()
    settings = loaded.settings
    assert settings.processors == ("photo_workflow.processors",)
    assert settings.processors_path == ((ROOT / "example_project").absolute(),)
    assert settings.images_roots == ((ROOT / "data" / "photos").absolute(),)
    assert settings.failures_handler == "photo.quarantine"


# --------------------------------------------------------------------------- the processors, in-process


def _context(repo: Path, type_: str) -> Context:
    (repo / "spoolpipe.properties").write_text("images.roots = photos\n")
    (repo / "reports").mkdir(exist_ok=True)
    settings = config.load(repo).settings
    declared = registered()[type_].follow_up_types
    return Context(logging.getLogger("test"), "w", repo, settings, follow_up_types=declared)


def _follow_ups(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    return [(f.type, f.key, dict(f.data)) for f in ctx.follow_ups]


def test_ingest_finishes_the_job_of_an_attempt_that_crashed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "incoming").mkdir(parents=True)
    factory.photo(photos / "incoming" / "a.jpg")
    activity = Activity("A1", "photo.ingest", {"file": "incoming/a.jpg"})
    first_ctx = _context(tmp_path, "photo.ingest")
    first = ingest.ingest(activity, first_ctx)
    assert first["kind"] == "photo" and not (photos / "incoming" / "a.jpg").exists()
    assert [t for t, _, _ in _follow_ups(first_ctx)] == ["photo.renditions", "image.process"]
    # The attempt died before its commit: the next one finds its receipt, not a "duplicate".
    second_ctx = _context(tmp_path, "photo.ingest")
    second = ingest.ingest(replace(activity, attempt=2), second_ctx)
    assert second == first
    assert _follow_ups(second_ctx) == _follow_ups(first_ctx)
    assert (photos / first["moved_to"]).is_file()
    assert list((photos / "duplicates").glob("*")) == []


def test_overlapping_sweeps_skip_what_the_other_took(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "incoming").mkdir(parents=True)
    factory.photo(photos / "incoming" / "a.jpg")
    data = {"file": "incoming/a.jpg", "swept": True}
    taken = ingest.ingest(Activity("S1", "photo.ingest", data), _context(tmp_path, "photo.ingest"))
    assert taken["kind"] == "photo"
    skipped = ingest.ingest(Activity("S2", "photo.ingest", data), _context(tmp_path, "photo.ingest"))
    assert skipped == {"skipped": "incoming/a.jpg", "reason": "no longer there"}
    with pytest.raises(Fatal, match=r"'incoming/a\.jpg' does not exist"):
        by_hand = Activity("S3", "photo.ingest", {"file": "incoming/a.jpg"})
        ingest.ingest(by_hand, _context(tmp_path, "photo.ingest"))


def test_quarantine_moves_nothing_from_outside_the_roots(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    secret = factory.photo(tmp_path / "secret.jpg")
    failed = {"id": "F1", "type": "photo.ingest", "data": {"file": str(secret)}, "reason": "made up"}
    result = quarantine.quarantine(
        Activity("Q1", "photo.quarantine", {"failed": failed}), _context(tmp_path, "photo.quarantine")
    )
    assert "outside the image roots" in result["not_moved"]
    assert secret.is_file() and not (tmp_path / "photos" / "quarantine").exists()
    assert "made up" in (tmp_path / "reports" / "F1.txt").read_text()


def test_a_sweep_quarantines_a_file_whose_name_is_not_utf8_and_takes_the_rest(tmp_path: Path) -> None:
    """Its name cannot go into a follow-up (JSON is UTF-8): the whole sweep failed, every minute,
    and none of the other files was taken in."""
    photos = tmp_path / "photos"
    (photos / "incoming").mkdir(parents=True)
    factory.photo(photos / "incoming" / "good.jpg")
    factory.photo(Path(os.fsdecode(bytes(photos / "incoming") + b"/latin1-\xe9t\xe9.jpg")))
    ctx = _context(tmp_path, "photo.ingest")
    result = ingest.ingest(Activity("W1", "photo.ingest", {"folder": "incoming"}), ctx)
    assert (result["files"], result["quarantined"]) == (1, 1)
    assert [(t, k) for t, k, _ in _follow_ups(ctx)] == [("photo.ingest", "incoming/good.jpg")]
    [moved] = [p for p in (photos / "quarantine").iterdir() if not p.name.endswith(".report.txt")]
    assert moved.name == "latin1-\\xe9t\\xe9.jpg"
    report = moved.with_name(moved.name + ".report.txt").read_text()
    assert "latin1-\\xe9t\\xe9.jpg" in report and "not valid UTF-8" in report
    assert os.listdir(photos / "incoming") == ["good.jpg"]
