"""The canonical text form of a graph: one node a line, each with its source.

    graph mlp.forward {
      %0: f32[B, 64] = input(name="x", role="input")            # x  mlp.dln:3:5
      %4: f32[B, 128] = matmul(%0, %3)                           # h  mlp.dln:6:14
      ...
      return logits=%9
    }

A composite prints as a call of its own name, its results read by `result`
nodes: `%24: (f32[B, 4, T, 8], f32[B, 4, T]) = sdpa(%19, %21, %23, causal=true, ...)`.

`dln compile` writes this form (forward.ir, backward.ir); the docs and the
golden tests use it.  Strings are written as JSON string literals, so nothing
a user writes can break the format.
"""

from __future__ import annotations

import json
from typing import Any

from dln.compiler.ir import Attrs, DType, Graph, Node, Op, Phase, TensorType, subgraphs
from dln.compiler.symbolic import Sym


def format_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (DType, Sym)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, TensorType):
        return str(v)
    if isinstance(v, Attrs) or isinstance(v, dict):
        return "{" + ", ".join(f"{k}={format_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (tuple, list)):
        inner = ", ".join(format_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    return str(v)


def op_name(n: Node) -> str:
    """What `n` is called wherever the IR is shown: its op, or a composite's own name (`sdpa`), which no
    primitive shares."""
    return n.attrs["composite"] if n.op is Op.COMPOSITE else n.op.value


def format_node(n: Node) -> str:
    """One line; a node with a body is followed by the body's lines, indented, in braces."""
    args = [f"%{i}" for i in n.inputs]
    args += [f"{k}={format_value(v)}" for k, v in n.attrs.items()
             if not isinstance(v, Graph) and not (n.op is Op.COMPOSITE and k == "composite")]
    type_ = str(n.type) if not n.results else "(" + ", ".join(str(t) for t in n.results) + ")"
    text = f"%{n.id}: {type_} = {op_name(n)}({', '.join(args)})"
    where = []
    if n.name:
        where.append(n.name)
    if n.loc is not None:
        where.append(f"{n.loc.path}:{n.loc.line}:{n.loc.col}")
    if where:
        text = f"{text:<64} # {'  '.join(where)}"
    for body in subgraphs(n):
        inner = format_graph(body).rstrip("\n").split("\n")
        text += " {\n" + "\n".join("    " + line for line in inner) + "\n  }"
    return text


def format_graph(g: Graph, phases: set[Phase] | None = None) -> str:
    """The graph's text; with `phases`, only the nodes of those phases (and no leaves of others)."""
    lines = [f"graph {g.name} {{"]
    phase = None
    for n in g.nodes:
        if phases is not None and n.phase not in phases:
            continue
        if n.phase is not phase and phase is not None or (phase is None and n.phase is not Phase.FORWARD):
            lines.append(f"  # -- {n.phase.value}")
        phase = n.phase
        lines.append("  " + format_node(n))
    for c in g.constraints:
        lines.append(f"  require {c.lhs} {c.relation} {c.rhs}  # {json.dumps(c.message)}")
    lines.append("  return " + ", ".join(f"{name}=%{i}" for name, i in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
