"""``spoolpipe graph``: how activity types lead to one another, as Mermaid or Graphviz text.

The graph is built from what a worker would load: the processors the
configuration imports (each type's declared ``follow_ups``), the schedules and
the failure handler. A processor that declares no ``follow_ups`` may create
any type, which a picture cannot name: it gets one dashed edge to an "any
type" node. Every type but the handler leads to the handler on failure, drawn
once from a "fails for good" node. The core is pure (``build``, ``to_mermaid``,
``to_dot``) and deterministic: everything is sorted, node ids are numbered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from .activity import printable
from .mermaid import label_text
from .schedule.rules import Rule

Format = Literal["mermaid", "dot"]
FORMATS: tuple[Format, ...] = ("mermaid", "dot")

#: Labels of the two nodes that stand for more than one type.
ANY_TYPE_LABEL: Final = "any type (follow_ups not declared)"
FAILED_LABEL: Final = "an activity fails for good"
NO_PROCESSOR: Final = "no processor"

_ANY_ID: Final = "any"
_FAILED_ID: Final = "failed"
_DOT_PLAIN: Final = frozenset(" _-.,:/")


class EdgeKind(StrEnum):
    FOLLOW_UP = "follow-up"  # a declared follow-up type
    ANY_FOLLOW_UP = "any follow-up"  # no declaration: any type
    SCHEDULE = "schedule"  # a schedule fires the type
    FAILURE = "failure"  # failed for good: the failure handler


@dataclass(frozen=True)
class TypeNode:
    id: str
    type: str
    #: False: declared as a follow-up, fired by a schedule or named as handler, but no processor here.
    handled: bool


@dataclass(frozen=True)
class ScheduleNode:
    id: str
    name: str


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    #: Shown on the edge: a schedule's expression, ``failures.handler``; "" for none.
    label: str = ""


@dataclass(frozen=True)
class FlowGraph:
    types: tuple[TypeNode, ...]
    schedules: tuple[ScheduleNode, ...]
    edges: tuple[Edge, ...]

    @property
    def has_any(self) -> bool:
        return any(e.kind is EdgeKind.ANY_FOLLOW_UP for e in self.edges)

    @property
    def has_failed(self) -> bool:
        return any(e.kind is EdgeKind.FAILURE for e in self.edges)


def build(
    follow_ups: Mapping[str, frozenset[str] | None], schedules: Mapping[str, Rule], handler: str
) -> FlowGraph:
    """The graph of processors by type (their declared ``follow_ups``; None: any type), the
    schedules by name and the failure handler type ("": none)."""
    named = set(follow_ups)
    named.update(t for declared in follow_ups.values() for t in declared or ())
    named.update(rule.type for rule in schedules.values())
    if handler:
        named.add(handler)
    types = tuple(TypeNode(f"t{n}", t, t in follow_ups) for n, t in enumerate(sorted(named), 1))
    node = {t.type: t.id for t in types}
    rules = tuple(ScheduleNode(f"s{n}", name) for n, name in enumerate(sorted(schedules), 1))
    edges: list[Edge] = []
    for t in types:
        declared = follow_ups.get(t.type, frozenset())
        if declared is None:
            edges.append(Edge(t.id, _ANY_ID, EdgeKind.ANY_FOLLOW_UP))
        else:
            edges.extend(Edge(t.id, node[target], EdgeKind.FOLLOW_UP) for target in sorted(declared))
    edges.extend(
        Edge(s.id, node[schedules[s.name].type], EdgeKind.SCHEDULE, schedules[s.name].expression)
        for s in rules
    )
    if handler:
        edges.append(Edge(_FAILED_ID, node[handler], EdgeKind.FAILURE, "failures.handler"))
    return FlowGraph(types, rules, tuple(edges))


def _type_label(node: TypeNode) -> str:
    return node.type if node.handled else f"{node.type} ({NO_PROCESSOR})"


def to_mermaid(graph: FlowGraph) -> str:
    """A Mermaid flowchart: boxes for types (dashed: no processor), a flag per schedule, a rounded
    node for "any type" and a hexagon for failures; every label escaped."""
    lines = ["flowchart LR"]
    lines += [f'    {t.id}["{label_text(printable(_type_label(t)))}"]' for t in graph.types]
    lines += [f'    {s.id}>"{label_text(printable("schedule " + s.name))}"]' for s in graph.schedules]
    if graph.has_any:
        lines.append(f'    {_ANY_ID}(["{label_text(ANY_TYPE_LABEL)}"])')
    if graph.has_failed:
        lines.append(f'    {_FAILED_ID}{{{{"{label_text(FAILED_LABEL)}"}}}}')
    for e in graph.edges:
        arrow = "-.->" if e.kind is EdgeKind.ANY_FOLLOW_UP else "-->"
        label = f'|"{label_text(printable(e.label))}"|' if e.label else ""
        lines.append(f"    {e.source} {arrow}{label} {e.target}")
    missing = [t.id for t in graph.types if not t.handled]
    if missing or graph.has_any:
        dashed = [*missing, *([_ANY_ID] if graph.has_any else [])]
        lines.append("    classDef dashed stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(dashed)} dashed")
    return "\n".join(lines) + "\n"


def dot_text(text: str) -> str:
    """``text`` for inside a quoted Graphviz label, shown as written: a backslash doubled (Graphviz
    reads ``\\N``, ``\\n``... in labels), every other character but letters, digits, spaces and
    ``_-.,:/`` as a character reference (``&#34;``), so nothing can end the string; characters
    that are not printable are first spelt out (``\\x1b``), as in every spoolpipe output."""
    return "".join(_dot_char(char) for char in printable(text))


def _dot_char(char: str) -> str:
    if (char.isalnum() and char.isprintable()) or char in _DOT_PLAIN:
        return char
    return "\\\\" if char == "\\" else f"&#{ord(char)};"


def to_dot(graph: FlowGraph) -> str:
    """A Graphviz digraph with the same nodes and edges as :func:`to_mermaid`."""
    lines = ["digraph spoolpipe {", "    rankdir=LR;", "    node [shape=box];"]
    for t in graph.types:
        style = "" if t.handled else ", style=dashed"
        lines.append(f'    {t.id} [label="{dot_text(_type_label(t))}"{style}];')
    lines += [f'    {s.id} [label="{dot_text("schedule " + s.name)}", shape=cds];' for s in graph.schedules]
    if graph.has_any:
        lines.append(f'    {_ANY_ID} [label="{dot_text(ANY_TYPE_LABEL)}", shape=ellipse, style=dashed];')
    if graph.has_failed:
        lines.append(f'    {_FAILED_ID} [label="{dot_text(FAILED_LABEL)}", shape=hexagon];')
    for e in graph.edges:
        attributes = []
        if e.label:
            attributes.append(f'label="{dot_text(e.label)}"')
        if e.kind is EdgeKind.ANY_FOLLOW_UP:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {e.source} -> {e.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(graph: FlowGraph, format: Format) -> str:
    return to_mermaid(graph) if format == "mermaid" else to_dot(graph)
