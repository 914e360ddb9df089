"""Reusing finished claims' files for the next records (``durable.Spares``), on real directories.

A reused file must be one nobody else can write: these tests try the ones that must not be reused
(held open by a writer, another name, another owner, read-only) and check every record stays whole.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from harness import leftovers, make_repository, records, run_until_idle, submit
from spoolpipe import config
from spoolpipe.activity import ClaimName
from spoolpipe.durable import Spares, is_local
from spoolpipe.record import Attempt, done_record
from spoolpipe.repository import Found, Repository, Settled, Settlement

ATTEMPT = Attempt("w1", "host", 1234, 1_795_334_400.0, 1_795_334_401.0)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    if not is_local(root):
        pytest.fail(f"{root} must be on a local file system for these tests")
    return Repository(root, fsync=True, worker="w1")


def run_one(repo: Repository, activity_id: str, doc: dict[str, Any] | None = None) -> tuple[int, Path]:
    """Publish, claim and settle one activity as a pool process does; its claim's inode and its record."""
    path = repo.inbox / f"{activity_id}.json"
    if not path.exists():
        path.write_text(json.dumps(doc or {"type": "t", "data": {"pad": "x" * 300}}))
    inode = path.stat().st_ino
    found = repo.read(path.name, limit=1 << 20)
    assert isinstance(found, Found)
    activity = found.activity
    claim = repo.claim(path.name, activity, "w1")
    assert isinstance(claim, ClaimName)
    assert repo.reserve(claim, activity, path.name, time.time()) is None
    settlement = Settlement(claim, "done", done_record(activity, ATTEMPT, {"n": activity_id}, []), [])
    assert repo.settle([settlement]) == [Settled(settlement, "committed")]
    return inode, repo.done / f"{activity_id}.json"


def test_a_finished_claims_file_becomes_the_next_record(repo: Repository) -> None:
    first_inode, first = run_one(repo, "a1")
    second_inode, second = run_one(repo, "a2")
    assert second.stat().st_ino == first_inode  # a1's claim file now holds a2's record
    assert json.loads(second.read_text())["result"] == {"n": "a2"}  # whole: the old bytes are cut off
    assert json.loads(first.read_text())["result"] == {"n": "a1"}
    assert stat.S_IMODE(second.stat().st_mode) == stat.S_IMODE(first.stat().st_mode)
    assert [n.startswith("spare~w1~") for n in os.listdir(repo.tmp)] == [True]
    assert os.listdir(repo.running) == [] and os.listdir(repo.ids) == []
    assert second_inode not in {p.stat().st_ino for p in repo.done.iterdir()}  # a2's claim is the spare now


def test_a_file_someone_still_has_open_is_never_reused(repo: Repository) -> None:
    """A writer that still holds the inbox file open could write into whatever record reused it."""
    (repo.inbox / "a1.json").write_text(json.dumps({"type": "t", "data": {}}))
    writer = os.open(repo.inbox / "a1.json", os.O_WRONLY | os.O_APPEND)
    try:
        held_inode, _ = run_one(repo, "a1")
        run_one(repo, "a2")
        _, third = run_one(repo, "a3")
        assert held_inode not in {p.stat().st_ino for p in repo.done.iterdir()}
        os.write(writer, b"  late bytes of a slow writer  ")
    finally:
        os.close(writer)
    for record in records(repo.done).values():
        assert record["result"]["n"] in {"a1", "a2", "a3"}  # every record parses and is its own
    assert json.loads(third.read_text())["result"] == {"n": "a3"}


def test_a_file_with_another_name_is_never_reused(repo: Repository, tmp_path: Path) -> None:
    run_one(repo, "a1")
    (spare,) = os.listdir(repo.tmp)
    os.link(repo.tmp / spare, tmp_path / "elsewhere")  # e.g. someone's hard link to the claimed file
    _, second = run_one(repo, "a2")
    assert second.stat().st_ino != (tmp_path / "elsewhere").stat().st_ino
    assert json.loads((tmp_path / "elsewhere").read_text())["type"] == "t"  # left as it was
    assert json.loads(second.read_text())["result"] == {"n": "a2"}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_of_another_user_is_never_reused(repo: Repository) -> None:
    """Another user's file would carry its owner (and any descriptor it kept) into our record."""
    path = repo.inbox / "a1.json"
    path.write_text(json.dumps({"type": "t", "data": {}}))
    os.chown(path, 65534, 65534)
    run_one(repo, "a1")
    _, second = run_one(repo, "a2")
    # (its inode number may come back: the kernel reuses the number of the file deleted instead)
    assert (second.stat().st_uid, second.stat().st_gid) == (os.geteuid(), os.getegid())
    assert json.loads(second.read_text())["result"] == {"n": "a2"}


def test_a_reused_file_gets_the_mode_of_a_new_one(repo: Repository) -> None:
    _, first = run_one(repo, "a0")
    path = repo.inbox / "a1.json"
    path.write_text(json.dumps({"type": "t", "data": {}}))
    path.chmod(0o4600)  # a producer's private file, setuid bit and all
    mine, _ = run_one(repo, "a1")
    _, second = run_one(repo, "a2")
    assert second.stat().st_ino == mine
    assert stat.S_IMODE(second.stat().st_mode) == stat.S_IMODE(first.stat().st_mode)


def test_a_spare_swept_away_meanwhile_means_a_new_file(repo: Repository) -> None:
    run_one(repo, "a1")
    for name in os.listdir(repo.tmp):
        os.unlink(repo.tmp / name)  # sweep_tmp of another worker, or a person
    _, second = run_one(repo, "a2")
    assert json.loads(second.read_text())["result"] == {"n": "a2"}


def test_spares_are_kept_only_by_a_worker_and_only_so_many(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.create(root, "")
    cli = Repository(root, fsync=False)  # submit, retry...: no worker, no spares
    run_one(cli, "a1")
    assert os.listdir(cli.tmp) == []
    spares = Spares(os.fspath(root / "tmp"), "w1", limit=2)
    for i in range(4):
        (root / f"f{i}").write_text("x")
        spares.keep(os.fspath(root / f"f{i}"))
    assert len(os.listdir(root / "tmp")) == 2 and not any((root / f"f{i}").exists() for i in range(4))
    spares.drop()
    assert os.listdir(root / "tmp") == []


def test_no_spare_outlives_its_worker_even_a_killed_one(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 2\n")
    ids = [submit(repo, "t.noop") for _ in range(300)]
    run_until_idle(repo)
    assert sorted(records(repo / "done")) == sorted(ids)
    assert leftovers(repo) == {}
    assert os.listdir(repo / "tmp") == []  # the spares went with the worker
    # spares of a run that was killed (none of its processes could delete them) go at the next start
    (repo / "tmp" / "spare~w1~999-dead-1.tmp").write_text("{}")
    (repo / "tmp" / "spare~w2~999-other-1.tmp").write_text("{}")  # another worker's: not ours to drop
    run_until_idle(repo)
    assert os.listdir(repo / "tmp") == ["spare~w2~999-other-1.tmp"]
