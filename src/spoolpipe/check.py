"""``spoolpipe worker REPO --check``: what a worker would start with, without starting one.

It loads the configuration and imports the processor modules exactly as a
worker does at start-up, then says which types this worker would take and what
looks wrong. It takes no lock, writes no log and never looks at the inbox, so
it is safe beside the running worker of the same id (before a reload, after an
upgrade, in a deployment script).
"""

from __future__ import annotations

import errno
import os
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from . import config, control, pool
from .attempt import counted
from .durable import temp_beside
from .liveness import resolve_mode
from .pool import ProcessorImportError, import_processors
from .processor import Registration, registered
from .repository import Repository

#: Exit codes, per the shared convention (docs/operations.md, *Exit codes*).
EXIT_OK, EXIT_CONFIGURATION, EXIT_CANNOT_START = 0, 2, 3


def where_it_failed(error: BaseException, settings: config.Settings) -> str:
    """``FILE:LINE`` of the code that raised ``error`` (the bad line of a syntax error), or, for a
    module that is not found at all, of the ``processors`` line naming it."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    package = os.path.dirname(pool.__file__) + os.sep  # spoolpipe's own frames (its registry's checks)
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if "importlib" not in f.filename and not f.filename.startswith(package)
    ]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    return settings.key_sources.get("processors", "processors")


def review(settings: config.Settings, processors: Mapping[str, Registration]) -> list[str]:
    """Warnings about a configuration that loads and processors that import, but do not fit together."""
    warnings = []
    if not settings.processors:
        warnings.append("processors is empty: only the built-in types run here")
    modules = {reg.module for reg in processors.values()}
    for name in settings.processors:
        if not any(m == name or m.startswith(f"{name}.") for m in modules):
            warnings.append(f"processors: {name} registers no processor (no @processor in it)")
    for folder in settings.processors_path:
        if not os.path.isdir(folder):
            warnings.append(f"processors.path: {folder} is not a folder: nothing is imported from it")
    for key, types in (("concurrency", settings.concurrency), ("timeout", settings.timeouts)):
        for type_ in sorted(types):
            if type_ not in processors:
                warnings.append(f"{key}.{type_} is set, but no processor imported here handles {type_!r}")
    for type_ in sorted(settings.circuits):
        if type_ not in processors:
            warnings.append(f"circuit.{type_}.* is set, but no processor imported here handles {type_!r}")
    for reg in sorted(processors.values(), key=lambda r: r.type):
        for follow_up in sorted(reg.follow_up_types or ()):
            if follow_up not in processors:
                warnings.append(
                    f"{reg.type} may create {follow_up!r}, which no processor imported here handles "
                    "(a worker elsewhere must, or those activities wait forever)"
                )
    handler = settings.failures_handler
    if handler and handler not in processors:
        warnings.append(f"failures.handler = {handler}: no processor imported here handles it")
    return warnings


def load_configuration(root: Path, worker_id: str | None, err: TextIO) -> config.Loaded | None:
    """The configuration of ``worker_id`` (None: the shared file only), or None once ``err`` says
    why it is invalid (exit code 2)."""
    try:
        return config.load(root, worker_id)
    except config.ConfigError as exc:
        print(f"invalid configuration:\n{exc}", file=err)
        return None


def import_configured(settings: config.Settings, err: TextIO) -> Mapping[str, Registration] | None:
    """Import the processors as a worker does at start-up and return them by type, or None once
    ``err`` says where the import failed (exit code 3)."""
    paths = [str(p) for p in settings.processors_path]
    try:
        import_processors(settings.processors, paths)
    except ProcessorImportError as exc:
        cause = exc.__cause__ or exc
        print(f"{where_it_failed(cause, settings)}: {type(cause).__name__}: {cause}", file=err)
        print(f"the worker cannot start: {exc}", file=err)
        return None
    return registered()


def _create_beside(path: Path) -> None:
    """Make a file beside ``path`` and remove it again: ``OSError`` says why none could be made there."""
    probe = temp_beside(path)
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    os.unlink(probe)


def try_metrics(root: Path, worker_id: str, s: config.Settings, out: TextIO, err: TextIO) -> bool:
    """Try what a starting worker does with ``metrics.file`` (a new file in its folder, removed again)
    and ``metrics.port`` (bound, then released); False once ``err`` says why it would not start.

    The running worker of the same id holds its port, which it keeps at a reload: that is only said.
    """
    if s.metrics_file is not None:
        try:
            _create_beside(s.metrics_file)
        except OSError as exc:
            print(
                f"the worker cannot start: cannot write metrics.file {s.metrics_file}: {exc.strerror}",
                file=err,
            )
            return False
    if s.metrics_port:
        from prometheus_client import CollectorRegistry  # only now, as in the worker

        from .metrics import Endpoint

        try:
            Endpoint(s.metrics_host, s.metrics_port, CollectorRegistry()).close()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and control.live_worker(
                Repository(root), worker_id, time.time()
            ):
                print(
                    f"note: metrics.port {s.metrics_port} is in use by the running worker {worker_id}",
                    file=out,
                )
                return True
            where = f"{s.metrics_host} port {s.metrics_port}"
            print(
                f"the worker cannot start: cannot serve metrics on {where}: {exc.strerror or exc}", file=err
            )
            return False
    return True


def try_files(root: Path, worker_id: str, err: TextIO) -> bool:
    """Open for writing what a starting worker opens, its log and its lock (where absent, a file made
    beside and removed again); False once ``err`` says why it would not start."""
    for what, path in (
        ("its log", root / "logs" / "workers" / f"{worker_id}.log"),
        ("its lock", root / "locks" / f"{worker_id}.lock"),
    ):
        try:
            if os.path.lexists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK))
            else:
                _create_beside(path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link or a FIFO: the worker makes its own
                continue
            print(f"the worker cannot start: cannot write {what} {path}: {exc.strerror or exc}", file=err)
            return False
    return True


def check_worker(root: Path, worker_id: str, out: TextIO, err: TextIO) -> int:
    """Print what worker ``worker_id`` would start with; 0, 2 (configuration) or 3 (processors)."""
    loaded = load_configuration(root, worker_id, err)
    if loaded is None:
        return EXIT_CONFIGURATION
    s = loaded.settings
    sources = ", ".join(str(p) for p in s.sources) or "none (every key at its default)"
    print(f"configuration of worker {worker_id}: {sources}", file=out)
    processors = import_configured(s, err)
    if (
        processors is None
        or not try_metrics(root, worker_id, s, out, err)
        or not try_files(root, worker_id, err)
    ):
        return EXIT_CANNOT_START
    paths = [str(p) for p in s.processors_path]
    print(
        f"processors: {', '.join(s.processors) or '(none)'}; processors.path: {', '.join(paths) or '(none)'}",
        file=out,
    )
    print(
        f"pool.size {s.pool_size}, claims.lock {s.claims_lock} ({resolve_mode(s.claims_lock, root)} here), "
        f"shutdown.grace-seconds {s.shutdown_grace_seconds:g}",
        file=out,
    )
    taken = [t for t in sorted(processors) if s.concurrency_for(t) > 0]
    print(f"types this worker takes ({len(taken)}), with the most it runs at once:", file=out)
    for type_ in taken:
        print(
            f"  {type_}  {min(s.concurrency_for(type_), s.pool_size)}  ({processors[type_].origin})", file=out
        )
    refused = [t for t in sorted(processors) if s.concurrency_for(t) == 0]
    if refused:
        print(f"types imported but never taken here (concurrency 0): {', '.join(refused)}", file=out)
    warnings = [*loaded.warnings, *review(s, processors)]
    for warning in warnings:
        print(f"warning: {warning}", file=out)
    print(f"ok: worker {worker_id} can start ({counted(len(warnings), 'warning', 'warnings')})", file=out)
    return EXIT_OK
