"""The schema: every key as an :class:`Option`, the families of keys and the groups' titles."""

from __future__ import annotations

from dataclasses import dataclass

from .. import circuit
from ..activity import MAX_ATTEMPTS
from ..builtins import specs as builtin_specs
from ..schedule import rules as schedule_rules
from ._kinds import (
    TYPE_PATTERN,
    ArgvKind,
    BoolKind,
    ChoiceKind,
    CronKind,
    DirectoryKind,
    DurationKind,
    EnvNamesKind,
    ExceptionNamesKind,
    ExitCodesKind,
    FloatKind,
    HeadersKind,
    HostKind,
    IntKind,
    JsonObjectKind,
    KeepKind,
    Kind,
    ModuleListKind,
    PathListKind,
    PortKind,
    SecondsKind,
    StringKind,
    SuffixFileKind,
    TypeNameKind,
    UrlKind,
    WorkerListKind,
)


@dataclass(frozen=True)
class Option:
    """One configuration key.

    A key containing ``<...>`` (``concurrency.<type>``, ``timeout.<type>``,
    ``custom.<name>``) is a pattern standing for a family of keys; it has no
    default (``default is None``) and ``example`` holds a sample line.
    """

    key: str
    kind: Kind
    #: The default as it is written in a properties file; None for patterns.
    default: str | None
    description: str
    example: str = ""
    #: For a pattern, the value each key of the family has when unset, for the table (None: no value).
    family_default: str | None = None

    @property
    def is_pattern(self) -> bool:
        return self.default is None

    @property
    def prefix(self) -> str:
        """For a pattern key, the literal part before the placeholder."""
        return self.key.split("<", 1)[0]

    @property
    def field(self) -> str:
        """For a key with a placeholder in the middle (``schedule.<name>.cron``), what follows it
        (``cron``); "" for every other key."""
        _, _, rest = self.key.partition(">.")
        return rest if "<" in self.key else ""

    @property
    def group(self) -> str:
        return self.key.split(".", 1)[0]


@dataclass(frozen=True)
class Family:
    """Keys with a placeholder in the middle, ``PREFIX<name>.FIELD``: one definition per name.

    The name is what lies between the prefix and the last dot and must match
    ``name_pattern``; each field is an :class:`Option` of key ``PREFIX<placeholder>.FIELD``
    in :data:`OPTIONS`. An unknown field or a bad name is an error, not a warning. With
    ``shared_only`` the keys may be set only in the shared file.
    """

    prefix: str
    placeholder: str
    name_pattern: str
    shared_only: bool = False

    def fields(self) -> dict[str, Option]:
        return {opt.field: opt for opt in OPTIONS if opt.field and opt.prefix == self.prefix}


_TYPE_NOTE = f"Type names match {TYPE_PATTERN}."
#: More pool processes than any host this runs on has cores for: a typo (10000) would fork them all.
MAX_POOL_SIZE = 1024

#: Every configuration key, in the order they are documented.
OPTIONS: tuple[Option, ...] = (
    Option(
        "processors",
        ModuleListKind(),
        "",
        "Comma-separated Python modules imported by every pool process; importing "
        "them registers their processors (for example myproject.processors).",
    ),
    Option(
        "processors.path",
        PathListKind(),
        "",
        "Comma-separated directories added to sys.path before the processor modules "
        "are imported. Relative paths are resolved against the directory of the file "
        "that sets this key: REPO for the shared file, REPO/workers for a "
        "per-worker file.",
    ),
    Option(
        "pool.size",
        IntKind(0, MAX_POOL_SIZE),
        "0",
        "Number of worker processes in this daemon's pool. 0 means one per CPU available to the daemon.",
    ),
    Option(
        "concurrency.default",
        IntKind(0),
        "0",
        "Maximum number of concurrently running activities of a type that has no "
        "concurrency key of its own. 0 means the pool size.",
    ),
    Option(
        "concurrency.<type>",
        IntKind(0),
        None,
        "Maximum number of concurrently running activities of the given type on this "
        "worker, overriding concurrency.default. 0 means this worker never takes "
        f"activities of that type (useful in a per-worker file). {_TYPE_NOTE}",
        example="concurrency.image.resize = 2",
    ),
    Option(
        "timeout.seconds",
        SecondsKind(0, exclusive=True),
        "300",
        "Wall-clock limit, in seconds, for running one activity: its processor, then checking and "
        "storing what it returned or raised.",
    ),
    Option(
        "timeout.<type>",
        SecondsKind(0, exclusive=True),
        None,
        "Wall-clock limit, in seconds, for activities of the given type, overriding "
        f"timeout.seconds. {_TYPE_NOTE}",
        example="timeout.video.transcode = 3600",
    ),
    Option(
        "retry.max-attempts",
        IntKind(1, MAX_ATTEMPTS),
        "5",
        "Number of attempts, including attempts that crashed their worker process, "
        f"before an activity is failed. 1 disables retries; at most {MAX_ATTEMPTS:,}, what an inbox "
        "name counts.",
    ),
    Option(
        "retry.backoff-seconds",
        SecondsKind(0),
        "2.0",
        "Delay, in seconds, before the second attempt of an activity; the delay "
        "doubles with every further attempt.",
    ),
    Option(
        "retry.backoff-max-seconds",
        SecondsKind(0),
        "600.0",
        "Upper bound, in seconds, on the delay between attempts.",
    ),
    Option(
        "retry.jitter",
        FloatKind(0, maximum=1),
        "0.25",
        "Random fraction applied to each delay: 0.25 multiplies it by a random "
        "factor between 0.75 and 1.25. 0 disables jitter.",
    ),
    Option(
        "retry.max-attempts.<type>",
        IntKind(1, MAX_ATTEMPTS),
        None,
        f"Number of attempts for activities of the given type, overriding retry.max-attempts. {_TYPE_NOTE}",
        example="retry.max-attempts.mail.send = 10",
    ),
    Option(
        "retry.backoff-seconds.<type>",
        SecondsKind(0),
        None,
        "Delay, in seconds, before the second attempt of an activity of the given type, overriding "
        f"retry.backoff-seconds (it doubles in the same way). {_TYPE_NOTE}",
        example="retry.backoff-seconds.mail.send = 30",
    ),
    Option(
        "retry.on.<type>",
        ExceptionNamesKind(),
        None,
        "The exceptions that are retried for activities of the given type; any other exception fails "
        "the activity at once. A name matches when the exception's class or one of its base classes "
        "has that name: module and qualified name (myproject.errors.Transient) or, for a built-in, "
        "its bare name (OSError also matches FileNotFoundError). Wins over the processor's retry_on. "
        "Empty: not set (the processor's retry_on applies, or else every exception is retried). "
        f"{_TYPE_NOTE}",
        example="retry.on.mail.send = OSError, smtplib.SMTPServerDisconnected",
    ),
    Option(
        "claims.lock",
        ChoiceKind(("auto", "flock", "lease", "strict")),
        "auto",
        "How a worker makes sure no other worker runs an activity it has claimed: "
        "flock (file locks), lease (claims that other workers take over once their "
        "owner has been silent for claims.lease-seconds), strict (a lock no other worker "
        "ever takes over: a dead worker's claims wait until an operator frees its lock, see "
        "docs/repository-format.md), or auto (chosen from the filesystem).",
    ),
    Option(
        "claims.lease-seconds",
        SecondsKind(0, exclusive=True),
        "30.0",
        "In lease mode, how long a worker may go silent before other workers take "
        "over its claims. Must be at least twice heartbeat.interval-seconds.",
    ),
    Option(
        "scan.interval-seconds",
        SecondsKind(0, exclusive=True),
        "2.0",
        "Period, in seconds, of the full rescan of the repository. The rescan always "
        "runs: on network filesystems it is the only way to see files written by "
        "other machines.",
    ),
    Option(
        "scan.watch",
        BoolKind(),
        "true",
        "Listen to inotify: a file moved or written into inbox/ on this machine is looked at "
        "at once, not at the next periodic rescan (files other machines write are found by the rescan).",
    ),
    Option(
        "inbox.settle-seconds",
        SecondsKind(0),
        "5.0",
        "An activity file that does not parse is presumed to still be being written, and is "
        "left alone, until it is this many seconds old by the shared file system's clock and "
        "has stayed unchanged this long while a worker watched it.",
    ),
    Option(
        "limits.activity-bytes",
        IntKind(2),
        "1048576",
        "Activity files larger than this many bytes are invalid.",
    ),
    Option(
        "limits.result-bytes",
        IntKind(4),
        "1048576",
        "Largest result, in bytes of compact JSON, a processor may return; a larger result "
        "fails its activity for good.",
    ),
    Option(
        "shutdown.grace-seconds",
        SecondsKind(0),
        "30.0",
        "On SIGTERM, how long, in seconds, running activities may continue in order "
        "to finish before they are stopped and released to other workers.",
    ),
    Option(
        "heartbeat.interval-seconds",
        SecondsKind(0, exclusive=True),
        "5.0",
        "How often, in seconds, a worker records that it is alive.",
    ),
    Option(
        "failures.handler",
        TypeNameKind(allow_empty=True),
        "spoolpipe.failure",
        "Type of the activity created for every activity that has failed for good, "
        "so that a processor can report or clean up. Empty disables it.",
    ),
    Option(
        "durability.fsync",
        BoolKind(),
        "true",
        "Flush files and directories to disk (fsync) after writing them, so that "
        "state survives a machine crash. Turning it off is faster but less safe.",
    ),
    Option(
        "log.level",
        ChoiceKind(("DEBUG", "INFO", "WARNING", "ERROR")),
        "INFO",
        "Logging level.",
    ),
    Option(
        "log.max-bytes",
        IntKind(0),
        "10485760",
        "Size in bytes at which the worker log, REPO/logs/workers/ID.log, is rotated: it becomes "
        "ID.log.1 (ID.log.1 becomes ID.log.2, and so on) and a new ID.log is started. 0 never "
        "rotates. Takes effect at restart.",
    ),
    Option(
        "log.backups",
        IntKind(1),
        "5",
        "How many rotated worker logs (ID.log.1 to ID.log.N) are kept; the oldest is deleted. "
        "Takes effect at restart.",
    ),
    Option(
        "images.roots",
        PathListKind(),
        "",
        "Comma-separated directories that image steps may read from and write to. "
        "Relative paths are resolved against the directory of the file that sets "
        "this key.",
    ),
    Option(
        "images.max-megapixels",
        FloatKind(0),
        "0",
        "Cap on the decoded megapixels held at the same time by all image work on "
        "this worker. 0 means automatic.",
    ),
    Option(
        "metrics.file",
        SuffixFileKind(".prom"),
        "",
        "File this worker writes its metrics to, in the Prometheus text format, at every "
        "heartbeat (a temp file renamed over it: never seen half-written), for node_exporter's "
        "textfile collector. Relative paths are resolved against the directory of the file "
        "that sets this key; use a path on local disk, one per worker (set it in "
        "REPO/workers/ID.properties when several workers share a machine). Empty: no file.",
    ),
    Option(
        "metrics.port",
        PortKind(),
        "0",
        "TCP port on which this worker serves its metrics over HTTP (GET /metrics) in the "
        "Prometheus text format; one port per worker on a machine. 0 or empty: not served.",
    ),
    Option(
        "metrics.host",
        HostKind(),
        "127.0.0.1",
        "Address metrics.port listens on: the default serves this machine only; 0.0.0.0 "
        "or :: serves every network.",
    ),
    Option(
        "processor.<type>.<key>",
        StringKind(),
        None,
        "A setting for the processor of the given type: it reads it as ctx.options[key], or typed with "
        "ctx.option(key, int, default). The key is the part after the last dot (letters, digits, _ "
        "and -); the type is everything between processor. and that dot. Values are checked by the "
        f"processor when it reads them (a bad one fails that activity). {_TYPE_NOTE}",
        example="processor.image.resize.quality = 80",
    ),
    Option(
        "retention.done",
        KeepKind(),
        "forever",
        "How long records in done/ are kept, judged by each record's modification time on the "
        "shared file system's clock; older ones are archived or deleted (retention.archive). "
        "forever keeps them. A purged id may be used again: a duplicate of it then runs.",
    ),
    Option(
        "retention.failed",
        KeepKind(),
        "forever",
        "How long records in failed/ are kept (as retention.done); forever keeps them.",
    ),
    Option(
        "retention.invalid",
        KeepKind(),
        "forever",
        "How long entries in invalid/ are kept (as retention.done); forever keeps them.",
    ),
    Option(
        "retention.logs",
        KeepKind(),
        "forever",
        "How long attempt logs in logs/activities/ (ID~N.log, and the notes ID~N.attempt.json "
        "beside them) are kept (as retention.done); forever keeps them. The logs of an activity "
        "that is queued or running are always kept.",
    ),
    Option(
        "retention.archive",
        BoolKind(),
        "true",
        "true: expired entries are moved into compressed archives, "
        "archive/STATE-YYYY-MM-DD.tar.gz (one per state and UTC day of the entry's "
        "modification time); false: they are deleted.",
    ),
    Option(
        "retention.interval",
        DurationKind(0.0, exclusive=True),
        "1h",
        "How often expired entries are looked for. One worker at a time does it "
        "(locks/~retention.lock), in a process of its own (spoolpipe purge --scheduled).",
    ),
    Option(
        "schedule.<name>.cron",
        CronKind(),
        None,
        "When the schedule <name> fires: a five-field cron expression evaluated in UTC "
        "(minute hour day-of-month month day-of-week), or @hourly, @daily, @weekly, @monthly, "
        "@yearly, @midnight. Set exactly one of cron and every. Names match "
        f"{schedule_rules.NAME_PATTERN}; schedule keys are read only from the shared file.",
        example="schedule.nightly.cron = 0 3 * * *",
    ),
    Option(
        "schedule.<name>.every",
        DurationKind(1, maximum_days=schedule_rules.EVERY_MAX_DAYS),
        None,
        "Fire the schedule <name> every so long, a whole number of seconds up to 366d (30s, 15m, 2h, "
        "1d): at the "
        "multiples of it since 1970-01-01T00:00:00Z. Set exactly one of cron and every.",
        example="schedule.pulse.every = 15m\nschedule.pulse.type = reports.pulse",
    ),
    Option(
        "schedule.<name>.type",
        TypeNameKind(),
        None,
        "Type of the activity each tick of the schedule <name> becomes (required). Its id is "
        "schedule.<name>.<tick as YYYYMMDDTHHMMSSZ>.",
        example="schedule.nightly.type = reports.nightly",
    ),
    Option(
        "schedule.<name>.data",
        JsonObjectKind(),
        None,
        "The data of each activity of the schedule <name> (default {}), to which spoolpipe adds "
        f"{schedule_rules.TICK_FIELD}, the tick's time (a key of that name here is an error). Nested at "
        "most 100 levels deep (the object itself is level 1), as spoolpipe submit's data.",
        example='schedule.nightly.data = {"format": "pdf"}',
    ),
    Option(
        "schedule.<name>.workers",
        WorkerListKind(),
        None,
        "Comma-separated ids of the workers allowed to fire the schedule <name> (any worker "
        "may run the activities). Default: any worker.",
        example="schedule.nightly.workers = nas, backup",
    ),
    Option(
        "schedule.<name>.catch-up",
        ChoiceKind(schedule_rules.CATCH_UP_CHOICES),
        None,
        "Ticks of the schedule <name> that came due while no worker ran: none skips them, latest "
        "(the default) fires the most recent one once, all fires each of them, at most "
        f"{schedule_rules.CATCH_UP_CAP} (the most recent; a warning names the rule when older ones "
        "are skipped).",
        example="schedule.nightly.catch-up = latest",
        family_default="latest",
    ),
    Option(
        "circuit.<type>.failures",
        IntKind(1),
        None,
        "Circuit breaker of the activity type <type> on this worker: once this many of its attempts "
        "ended in failed or retry (a timeout and a killed pool process count; a skip does not) within "
        "circuit.<type>.window-seconds, the worker claims no activity of that type for "
        "circuit.<type>.cool-down-seconds (they wait in the inbox, nothing is failed), then lets one "
        "through as a probe: its success closes the circuit, its failure opens it for another "
        "cool-down. Setting it turns the circuit on; each worker has its own circuits. "
        "Removing it closes the circuit. " + _TYPE_NOTE,
        example="circuit.mail.send.failures = 5",
    ),
    Option(
        "circuit.<type>.window-seconds",
        DurationKind(1),
        None,
        "How far back the failures of circuit.<type>.failures are counted (default "
        f"{circuit.DEFAULT_WINDOW_SECONDS:g}s). Only with circuit.<type>.failures.",
        example="circuit.mail.send.window-seconds = 2m",
    ),
    Option(
        "circuit.<type>.cool-down-seconds",
        DurationKind(1),
        None,
        "How long an open circuit claims no activity of <type> before it lets a probe through "
        f"(default {circuit.DEFAULT_COOL_DOWN_SECONDS:g}s). Only with circuit.<type>.failures.",
        example="circuit.mail.send.cool-down-seconds = 5m",
    ),
    Option(
        "command.<name>.argv",
        ArgvKind(),
        None,
        "The program a command activity naming <name> runs (data field command), as a JSON array: the "
        "program first (never taken from data), then its arguments. {field} in an argument is replaced by "
        "that field of the activity's data (a string or a number), and each argument stays one argument "
        "whatever the value holds: nothing goes through a shell. Required for each command. Names match "
        f"{builtin_specs.NAME_PATTERN}.",
        example='command.backup.argv = ["/usr/bin/rsync", "-a", "--", "{source}", "/backup/"]',
    ),
    Option(
        "command.<name>.cwd",
        DirectoryKind(),
        None,
        "Working directory of the command <name>. Default: the repository folder.",
        example="command.backup.cwd = /srv/data",
    ),
    Option(
        "command.<name>.timeout",
        DurationKind(0.1),
        None,
        "Longest the command <name> may run (30s, 15m, 2h): then its whole process group is killed and the "
        "activity is retried. Default, and never more than: timeout.command less one second.",
        example="command.backup.timeout = 10m",
    ),
    Option(
        "command.<name>.env",
        EnvNamesKind(),
        None,
        "Comma-separated names of the worker's environment variables passed to the command <name>; it "
        "gets no others. Default: PATH.",
        example="command.backup.env = PATH, HOME, LANG",
    ),
    Option(
        "command.<name>.ok-exit-codes",
        ExitCodesKind(),
        None,
        "Exit codes of the command <name> that mean done. Default: 0.",
        example="command.backup.ok-exit-codes = 0, 24",
    ),
    Option(
        "command.<name>.retry-exit-codes",
        ExitCodesKind(),
        None,
        "Exit codes of the command <name> that mean try again later (per retry.*); any other code not in "
        "ok-exit-codes fails the activity for good. Default: none.",
        example="command.backup.retry-exit-codes = 10, 12",
    ),
    Option(
        "http.<name>.url",
        UrlKind(),
        None,
        "Where an http.request activity naming <name> (data field endpoint; default: the endpoint named "
        "default) sends its data as a JSON body. Required for each endpoint. Redirects are not followed. "
        f"Names match {builtin_specs.NAME_PATTERN}.",
        example="http.alerts.url = https://chat.example.com/hooks/ops",
    ),
    Option(
        "http.<name>.method",
        ChoiceKind(builtin_specs.METHODS),
        None,
        "HTTP method of the endpoint <name> (GET sends no body). Default: POST.",
        example="http.alerts.method = POST",
    ),
    Option(
        "http.<name>.headers",
        HeadersKind(),
        None,
        "Extra request headers of the endpoint <name>, as a JSON object. Content-Type defaults to "
        "application/json; User-Agent, X-Spoolpipe-Activity and X-Spoolpipe-Attempt are spoolpipe's "
        "own and may not be set.",
        example='http.alerts.headers = {"Authorization": "Bearer 123"}',
    ),
    Option(
        "http.<name>.timeout",
        DurationKind(0.1),
        None,
        "Longest a whole request to the endpoint <name> may take (connecting, sending, reading the answer) "
        "before it is retried. Default: 30s, and never more than timeout.http.request less one second.",
        example="http.alerts.timeout = 10s",
    ),
    Option(
        "files.roots",
        PathListKind(),
        "",
        "Comma-separated directories that the files.move, files.copy, files.delete and files.archive "
        "activities may read from and write to; relative paths in their data start at the first. "
        "Relative paths here are resolved against the directory of the file that sets this key.",
    ),
    Option(
        "custom.<name>",
        StringKind(),
        None,
        "Free-form settings shared by all processors: any key starting with custom. and "
        "any value. They are not validated; processors find them in ctx.properties (Settings.custom), "
        "without the custom. prefix. For a setting of one processor, use processor.<type>.<key>.",
        example="custom.thumbnail.quality = 85",
    ),
)

#: Every family of keys with a placeholder in the middle, by prefix.
FAMILIES: dict[str, Family] = {
    "schedule.": Family("schedule.", "name", schedule_rules.NAME_PATTERN, shared_only=True),
    "circuit.": Family("circuit.", "type", TYPE_PATTERN),
    "command.": Family("command.", "name", builtin_specs.NAME_PATTERN),
    "http.": Family("http.", "name", builtin_specs.NAME_PATTERN),
}

GROUP_TITLES = {
    "processors": "Processors",
    "pool": "Worker pool",
    "concurrency": "Concurrency limits",
    "timeout": "Timeouts",
    "retry": "Retries",
    "claims": "Claiming activities",
    "scan": "Scanning the repository",
    "inbox": "Incoming activities",
    "limits": "Limits",
    "shutdown": "Shutdown",
    "heartbeat": "Heartbeats",
    "failures": "Failed activities",
    "durability": "Durability",
    "log": "Logging",
    "images": "Image processing",
    "metrics": "Metrics (Prometheus)",
    "processor": "Per-processor settings",
    "retention": "Cleaning up",
    "schedule": "Schedules",
    "circuit": "Circuit breakers",
    "command": "Built-in processor: command",
    "http": "Built-in processor: http.request",
    "files": "Built-in processors: files.*",
    "custom": "Custom settings for processors",
}
