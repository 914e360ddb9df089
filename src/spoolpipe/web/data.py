"""TEMPORARY stand-in for spoolpipe.views until branch observe is merged (replaced by a re-export)."""

from __future__ import annotations

import json
from typing import Any

from ..repository import Repository


def status(repo: Repository) -> dict[str, Any]:
    from ..cli import status as cli_status

    return cli_status(repo)


def _records(repo: Repository, state: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((repo.root / state).glob("*.json"), key=lambda p: -p.stat().st_mtime):
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            found.append(doc)
    return found


def entries(
    repo: Repository,
    state: str,
    *,
    type_: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for doc in _records(repo, state):
        section = doc.get("spoolpipe") or {}
        if type_ is not None and doc.get("type") != type_:
            continue
        rows.append(
            {
                "id": doc.get("id"),
                "type": doc.get("type"),
                "attempts": section.get("attempts"),
                "reason": section.get("reason"),
                "finished_at": section.get("finished_at"),
            }
        )
    return rows[:limit]


def story(repo: Repository, activity_id: str) -> dict[str, Any] | None:
    for state in ("done", "failed"):
        path = repo.root / state / f"{activity_id}.json"
        if path.exists():
            doc: dict[str, Any] = json.loads(path.read_bytes())
            return {"id": activity_id, "state": state, "record": doc}
    return None
