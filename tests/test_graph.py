"""``spoolpipe graph``: the pure model and renderers in-process, the command on real repositories,
the DOT through Graphviz and the Mermaid through mermaid.js in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from spoolpipe import config
from spoolpipe.activity import printable
from spoolpipe.graph import FlowGraph, build, dot_text, to_dot, to_mermaid
from spoolpipe.mermaid import label_text
from spoolpipe.repository import Repository
from spoolpipe.schedule.rules import Cron, Every, Rule

ROOT = Path(__file__).resolve().parent.parent
#: Installed by .ci/run (npm install --prefix .ci/mermaid mermaid@...).
MERMAID_JS = ROOT / ".ci" / "mermaid" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
HOSTILE = [
    'a"] --> X["pwned',
    "x\nflowchart TD\n  q",
    "<script>alert(1)</script>",
    "end",
    "semi;colon #hash &amp; 100%",
    "back\\slash \\N \\n",
    "tab\tand \x1b[31m escape \u202e bidi",
    "}; digraph q { a -> b",
    "`markdown` **bold** _under_ <b>tag</b>",
    "Zoë 東京 ✓",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _needed(message: str) -> None:
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message + " (not CI, so skipped)")


# -- the pure part ---------------------------------------------------------------------------------


def small_graph() -> FlowGraph:
    return build(
        {
            "orders.receive": frozenset({"orders.bill", "mail.send"}),
            "orders.bill": None,
            "ops.alert": frozenset(),
        },
        {
            "pulse": Rule("pulse", Every(900), "reports.pulse"),
            "nightly": Rule("nightly", Cron("0 3 * * *"), "orders.receive"),
        },
        "ops.alert",
    )


def test_mermaid_of_a_small_flow() -> None:
    assert to_mermaid(small_graph()) == textwrap.dedent(
        """\
        flowchart LR
            t1["mail.send #40;no processor#41;"]
            t2["ops.alert"]
            t3["orders.bill"]
            t4["orders.receive"]
            t5["reports.pulse #40;no processor#41;"]
            s1>"schedule nightly"]
            s2>"schedule pulse"]
            any(["any type #40;follow_ups not declared#41;"])
            failed{{"an activity fails for good"}}
            t3 -.-> any
            t4 --> t1
            t4 --> t3
            s1 -->|"cron 0 3 #42; #42; #42;"| t4
            s2 -->|"every 900s"| t5
            failed -->|"failures.handler"| t2
            classDef dashed stroke-dasharray: 5 5
            class t1,t5,any dashed
        """
    )


def test_dot_of_a_small_flow() -> None:
    assert to_dot(small_graph()) == textwrap.dedent(
        """\
        digraph spoolpipe {
            rankdir=LR;
            node [shape=box];
            t1 [label="mail.send &#40;no processor&#41;", style=dashed];
            t2 [label="ops.alert"];
            t3 [label="orders.bill"];
            t4 [label="orders.receive"];
            t5 [label="reports.pulse &#40;no processor&#41;", style=dashed];
            s1 [label="schedule nightly", shape=cds];
            s2 [label="schedule pulse", shape=cds];
            any [label="any type &#40;follow_ups not declared&#41;", shape=ellipse, style=dashed];
            failed [label="an activity fails for good", shape=hexagon];
            t3 -> any [style=dashed];
            t4 -> t1;
            t4 -> t3;
            s1 -> t4 [label="cron 0 3 &#42; &#42; &#42;"];
            s2 -> t5 [label="every 900s"];
            failed -> t2 [label="failures.handler"];
        }
        """
    )


def test_the_same_flow_gives_the_same_text_whatever_the_order_it_is_given_in() -> None:
    follow_ups = {f"t.{n}": frozenset({f"t.{(n * 7) % 10}", f"t.{(n * 3) % 10}"}) for n in range(10)}
    rules = {f"r{n}": Rule(f"r{n}", Every(60 * (n + 1)), f"t.{n}") for n in range(5)}
    forward = build(follow_ups, rules, "t.0")
    backward = build(dict(reversed(follow_ups.items())), dict(reversed(rules.items())), "t.0")
    assert to_mermaid(forward) == to_mermaid(backward)
    assert to_dot(forward) == to_dot(backward)


def test_without_a_handler_or_undeclared_follow_ups_there_is_no_failed_or_any_node() -> None:
    graph = build({"a": frozenset({"b"}), "b": frozenset()}, {}, "")
    assert to_mermaid(graph) == 'flowchart LR\n    t1["a"]\n    t2["b"]\n    t1 --> t2\n'
    assert "any" not in to_dot(graph) and "failed" not in to_dot(graph)


def test_a_type_that_follows_itself_and_a_handler_with_a_processor_are_plain_boxes() -> None:
    mermaid = to_mermaid(build({"loop": frozenset({"loop"})}, {}, "loop"))
    assert "    t1 --> t1\n" in mermaid
    assert "no processor" not in mermaid and "classDef" not in mermaid


@pytest.mark.parametrize("text", HOSTILE)
def test_no_label_text_can_end_its_quotes(text: str) -> None:
    for escaped in (label_text(printable(text)), dot_text(text)):
        assert '"' not in escaped and "\n" not in escaped and "\x1b" not in escaped
    assert re.fullmatch(r"([^\\]|\\\\)*", dot_text(text)), "a backslash that is not doubled"


def hostile_graph() -> FlowGraph:
    """Every hostile text as a schedule name and as a schedule expression: the pure core trusts no
    label (the configuration restricts both, but the renderers must not rely on it)."""
    rules = {name: Rule(name, Cron(name), "t.target") for name in HOSTILE}
    return build({"t.target": frozenset()}, rules, "")


def test_hostile_labels_stay_inside_their_mermaid_lines() -> None:
    lines = to_mermaid(hostile_graph()).splitlines()
    nodes = [line for line in lines if line.startswith("    s")]
    assert len(nodes) == 2 * len(HOSTILE)  # one node and one edge per schedule, nothing else
    assert all(re.fullmatch(r'    s\d+(>"[^"]*"\]| -->\|"[^"]*"\| t1)', line) for line in nodes), nodes


# -- the command, on real repositories ---------------------------------------------------------------

PROCESSORS = """
from spoolpipe import Processor, processor

@processor("orders.receive", follow_ups=("orders.bill", "orders.ship"))
def receive(activity, ctx):
    return None

class Bill(Processor):
    type = "orders.bill"
    follow_ups = ("mail.send",)

    def process(self, activity, ctx):
        return None

@processor("orders.ship")
def ship(activity, ctx):
    return None

@processor("ops.alert", follow_ups=())
def alert(activity, ctx):
    return None
"""

PROPERTIES = """\
processors = flow_procs
processors.path = {procs}
failures.handler = ops.alert
schedule.nightly.cron = 0 3 * * *
schedule.nightly.type = orders.receive
schedule.pulse.every = 15m
schedule.pulse.type = reports.pulse
"""


def make_flow_repository(tmp_path: Path, extra: str = "", module: str = PROCESSORS) -> Path:
    repo, procs = tmp_path / "repo", tmp_path / "procs"
    Repository.create(repo, config.render_defaults())
    procs.mkdir()
    (procs / "flow_procs.py").write_text(module)
    (repo / "spoolpipe.properties").write_text(PROPERTIES.format(procs=procs) + extra)
    return repo


def graph(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", "graph", *args], capture_output=True, text=True, timeout=60
    )


def node_ids(text: str) -> dict[str, str]:
    """Type (or schedule, "any", "failed") label -> node id, from a Mermaid graph."""
    return {
        html.unescape(m.group(2).replace("#", "&#")): m.group(1)
        for m in re.finditer(r'^    (\w+)\W*"([^"]*)"', text, re.MULTILINE)
    }


def test_the_graph_of_a_repository(tmp_path: Path) -> None:
    out = graph(str(make_flow_repository(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    ids = node_ids(out.stdout)
    edges = set(re.findall(r"^    (\w+) (-->|-\.->)(?:\|\"([^\"]*)\"\|)? (\w+)$", out.stdout, re.MULTILINE))
    receive, bill, ship, alert = (
        ids[t] for t in ("orders.receive", "orders.bill", "orders.ship", "ops.alert")
    )
    assert {
        (receive, "-->", "", bill),
        (receive, "-->", "", ship),
        (bill, "-->", "", ids["mail.send (no processor)"]),
    } <= edges
    assert (ship, "-.->", "", "any") in edges  # no declaration: any type
    assert not any(e[0] == alert for e in edges)  # follow_ups=(): none
    assert (ids["schedule nightly"], "-->", "cron 0 3 #42; #42; #42;", receive) in edges
    assert (ids["schedule pulse"], "-->", "every 900s", ids["reports.pulse (no processor)"]) in edges
    assert ("failed", "-->", "failures.handler", alert) in edges
    # The built-in processors register like any other.
    assert "image.process" in ids and "spoolpipe.failure" in ids
    dashed = re.search(r"^    class (\S+) dashed$", out.stdout, re.MULTILINE)
    assert dashed is not None
    assert set(dashed.group(1).split(",")) == {
        ids["mail.send (no processor)"],
        ids["reports.pulse (no processor)"],
        "any",
    }
    # The same graph in DOT.
    dot = graph(str(tmp_path / "repo"), "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert (
        f'{ids["mail.send (no processor)"]} [label="mail.send &#40;no processor&#41;", style=dashed];'
        in dot.stdout
    )
    assert f'failed -> {alert} [label="failures.handler"];' in dot.stdout
    assert f"{ship} -> any [style=dashed];" in dot.stdout


def test_a_worker_file_adds_its_processors_only_with_worker_id(tmp_path: Path) -> None:
    repo = make_flow_repository(tmp_path)
    (tmp_path / "procs" / "nas_procs.py").write_text(
        "from spoolpipe import processor\n\n"
        "@processor('mail.send', follow_ups=())\ndef send(a, ctx):\n    return None\n"
    )
    (repo / "workers" / "nas.properties").write_text("processors = flow_procs, nas_procs\n")
    shared = graph(str(repo))
    assert '["mail.send #40;no processor#41;"]' in shared.stdout
    nas = graph(str(repo), "--worker-id", "nas")
    assert nas.returncode == 0, nas.stderr
    assert '["mail.send"]' in nas.stdout and "no processor" in nas.stdout  # reports.pulse still has none


def test_what_processor_modules_print_does_not_get_into_the_graph(tmp_path: Path) -> None:
    """print() went to stderr, but a write to file descriptor 1 (a program the module ran, C code) did not."""
    noisy = "\nimport os, subprocess\nprint('loading flow_procs')\nos.write(1, b'raw write\\n')\n"
    noisy += "subprocess.run(['echo', 'from a program'])\n"
    repo = make_flow_repository(tmp_path, module=PROCESSORS + noisy)
    out = graph(str(repo), "--format", "dot")
    assert out.returncode == 0
    assert out.stdout.startswith("digraph spoolpipe {\n"), out.stdout[:200]
    assert "loading" not in out.stdout and "raw write" not in out.stdout and "program" not in out.stdout
    assert all(said in out.stderr for said in ("loading flow_procs", "raw write", "from a program"))


def test_an_invalid_configuration_exits_2_with_file_and_line(tmp_path: Path) -> None:
    repo = make_flow_repository(tmp_path, "schedule.bad.cron = 0 25 * * *\nschedule.bad.type = t.x\n")
    out = graph(str(repo))
    assert out.returncode == 2
    assert f"{repo / 'spoolpipe.properties'}:8: schedule.bad.cron:" in out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_processors_that_do_not_import_exit_3_with_file_and_line(tmp_path: Path) -> None:
    repo = make_flow_repository(tmp_path, module=PROCESSORS + "\nraise RuntimeError('no database')\n")
    out = graph(str(repo))
    assert out.returncode == 3
    assert f"{tmp_path / 'procs' / 'flow_procs.py'}:" in out.stderr and "no database" in out.stderr
    assert out.stdout == ""


def test_a_module_that_ends_the_process_at_import_exits_3_not_0(tmp_path: Path) -> None:
    """os._exit(0) at import ended the command with 0 and an empty graph: a script took it as drawn."""
    repo = make_flow_repository(tmp_path, module=PROCESSORS + "\nimport os\nos._exit(0)\n")
    out = graph(str(repo))
    assert out.returncode == 3
    assert f"{tmp_path / 'procs' / 'flow_procs.py'}:" in out.stderr and "os._exit(0)" in out.stderr
    assert out.stdout == ""


def test_bad_usage_and_not_a_repository_exit_2(tmp_path: Path) -> None:
    repo = make_flow_repository(tmp_path)
    for args in (
        [str(repo), "--format", "svg"],
        [str(repo), "--worker-id", "../x"],
        [str(tmp_path / "nope")],
    ):
        out = graph(*args)
        assert out.returncode == 2, args
        assert out.stdout == "" and "Traceback" not in out.stderr
    assert "Exit codes: 0 printed; 2 " in graph("--help").stdout


def test_the_readme_shows_the_graph_of_the_example_project(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "data", tmp_path / "repo")
    (tmp_path / "example_project").symlink_to(
        ROOT / "example_project"
    )  # processors.path = ../example_project
    Repository.create(tmp_path / "repo", config.render_defaults())
    out = graph(str(tmp_path / "repo"))
    assert out.returncode == 0, out.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "README.md has no mermaid block"
    assert block.group(1) == out.stdout, (
        "README.md's graph is stale: paste what `spoolpipe graph` prints for the example "
        "(a copy of data/ next to example_project/) into its ```mermaid block"
    )


# -- through the real renderers -----------------------------------------------------------------------


def svg_texts(dot_source: str) -> list[str]:
    dot = shutil.which("dot")
    if dot is None:
        _needed("Graphviz is needed: apt-get install graphviz")
        raise AssertionError  # unreachable: _needed fails or skips
    out = subprocess.run([dot, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Warning" not in out.stderr and "Error" not in out.stderr, out.stderr
    root = ET.fromstring(out.stdout)
    # Graphviz keeps runs of spaces as " \xa0".
    return ["".join(t.itertext()).replace("\xa0", " ") for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_graphviz_draws_the_dot_of_a_repository(tmp_path: Path) -> None:
    out = graph(str(make_flow_repository(tmp_path)), "--format", "dot")
    texts = svg_texts(out.stdout)
    for label in ("orders.receive", "mail.send (no processor)", "cron 0 3 * * *", "failures.handler"):
        assert label in texts


def test_graphviz_shows_hostile_labels_as_written() -> None:
    texts = svg_texts(to_dot(hostile_graph()))
    for text in HOSTILE:
        assert f"schedule {printable(text)}" in texts
        assert f"cron {printable(text)}" in texts  # the edge, labelled with the "expression"


MERMAID_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>pending</title></head><body>
<pre id="source">{source}</pre><div id="drawing"></div><pre id="labels"></pre>
<script src="{mermaid_js}"></script>
<script>
mermaid.initialize({{startOnLoad: false, securityLevel: "strict"}});
const source = document.getElementById("source").textContent;
mermaid.render("flow", source).then((r) => {{
  const drawing = document.getElementById("drawing");
  drawing.innerHTML = r.svg;
  const labels = [...drawing.querySelectorAll(".nodeLabel, .edgeLabel")].map((e) => e.textContent);
  const scripts = drawing.querySelectorAll("script").length;
  document.getElementById("labels").textContent = JSON.stringify({{labels, scripts}});
  document.title = "drawn";
}}).catch((e) => {{ document.title = "error"; document.getElementById("labels").textContent = String(e); }});
</script></body></html>
"""


def mermaid_labels(source: str, tmp_path: Path) -> set[str]:
    """Draw ``source`` with mermaid.js in headless Chromium; the texts of its labels."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or not MERMAID_JS.exists():
        _needed(f"headless Chromium and {MERMAID_JS.relative_to(ROOT)} are needed (see .ci/run)")
        raise AssertionError  # unreachable
    page = tmp_path / "flow.html"
    page.write_text(MERMAID_PAGE.format(source=html.escape(source), mermaid_js=MERMAID_JS.as_uri()))
    out = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--disable-background-networking", "--allow-file-access-from-files",
            "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    title = re.search(r"<title>(.*?)</title>", out.stdout)
    found = re.search(r'<pre id="labels">(.*?)</pre>', out.stdout, re.DOTALL)
    assert found is not None and title is not None
    assert title.group(1) == "drawn", html.unescape(found.group(1))
    drawn = json.loads(html.unescape(found.group(1)))
    assert drawn["scripts"] == 0
    return {" ".join(label.split()) for label in drawn["labels"]}


def test_mermaid_draws_the_graph_of_a_repository(tmp_path: Path) -> None:
    out = graph(str(make_flow_repository(tmp_path)))
    labels = mermaid_labels(out.stdout, tmp_path)
    expected = {
        "orders.receive", "orders.bill", "mail.send (no processor)", "schedule nightly", "cron 0 3 * * *",
        "every 900s", "any type (follow_ups not declared)", "an activity fails for good", "failures.handler",
    }  # fmt: skip
    assert expected <= labels


def test_mermaid_shows_hostile_labels_as_written(tmp_path: Path) -> None:
    labels = mermaid_labels(to_mermaid(hostile_graph()), tmp_path)
    for text in HOSTILE:
        shown = " ".join(printable(text).split())
        assert f"schedule {shown}" in labels
        assert f"cron {shown}" in labels
