"""Importing this module registers every processor of the workflow (name it in ``processors =``)."""

from __future__ import annotations

from . import catalogue, ingest, quarantine, renditions

__all__ = ["catalogue", "ingest", "quarantine", "renditions"]
