"""The names dln gives: to parameters, from the source, and to the values, gradients and kernels of the
generated code, from those (so a kernel traces back to the values and .dln lines it came from).

Parameter names, LANGUAGE.md §6, rule 2.  Before a binding `NAME = expr` is
evaluated, the calls in `expr` that own parameters (layers, block calls, model
instances) are listed in source order.  One such call is named `NAME`; several
are named `NAME.<kind>_<k>`.  A name bound a second time in the same scope
uses `NAME_1`, `NAME_2`, ... (only bindings that name layers count).  Calls
with `name = "..."` keep that name and are not counted.

Names in generated code (docs/architecture.md, "Names"): a value is named by the
binding that computes it, its gradient `grad:<name>`, a kernel of the
optimizer by the parameters it updates; user text reaches code only through
`safe_name`.
"""

from __future__ import annotations

import re

from typing import Callable, Iterator, Sequence

from dln.compiler.ir import Graph, GroupOp, Node, Op
from dln.dsl import ast


def safe_name(text: str, limit: int = 40) -> str:
    """An identifier fragment from user text: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)[:limit].strip("_")


def calls_in(expr: ast.Expr) -> Iterator[ast.Call]:
    """Every call inside `expr`, in no particular order."""
    stack: list[object] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Call):
            yield e
            stack.append(e.func)
            stack.extend(e.args)
            stack.extend(k.value for k in e.kwargs)
        elif isinstance(e, ast.Binary):
            stack += [e.left, e.right]
        elif isinstance(e, ast.Unary):
            stack.append(e.operand)
        elif isinstance(e, (ast.TupleExpr, ast.ListExpr)):
            stack.extend(e.items)
        elif isinstance(e, ast.Record):
            stack.extend(f.value for f in e.fields)
        elif isinstance(e, ast.Index):
            stack.append(e.value)
            stack.extend(e.items)
        elif isinstance(e, ast.Slice):
            stack.extend(x for x in (e.start, e.stop, e.step) if x is not None)


def has_name_override(call: ast.Call) -> bool:
    return any(k.name.name == "name" for k in call.kwargs)


class ScopeNames:
    """Naming state of one parameter scope: how often each binding name has named layers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def assign(self, binding: str, expr: ast.Expr, kind_of: Callable[[ast.Call], str | None]) -> dict[int, str]:
        """Names for the parameter-owning calls of `expr`, keyed by `id(call)`.

        `kind_of(call)` is the call's kind (`linear`, a block's name, a model's
        name) when it owns parameters, else None.
        """
        owning = [(c, kind_of(c)) for c in calls_in(expr) if not has_name_override(c)]
        owning = sorted(((c, k) for c, k in owning if k is not None),
                        key=lambda ck: (ck[0].span.line, ck[0].span.col))
        if not owning:
            return {}
        seen = self.counts.get(binding, 0)
        self.counts[binding] = seen + 1
        base = binding if seen == 0 else f"{binding}_{seen}"
        if len(owning) == 1:
            return {id(owning[0][0]): base}
        per_kind: dict[str, int] = {}
        names: dict[int, str] = {}
        for call, kind in owning:
            k = per_kind.get(kind, 0)
            per_kind[kind] = k + 1
            names[id(call)] = f"{base}.{kind}_{k}"
        return names


# ---- values, gradients and kernels in the generated code ---------------------------------------------------
#
# A value is named by the .dln binding that computes it (`h`, `layer_0.block.attn`), an input by its own
# name (`h.weight`, `rng.step`).  Two prefixes say how a value relates to a named one; the IR printer shows
# them as written, generated code as identifiers (`grad_h_weight`, `new_h_weight`).

GRADIENT = "grad:"   # the gradient of the loss with respect to a value: `grad:logits`, `grad:h.weight`
NEW = "new:"         # a training step's new value of an input it updates: `new:h.weight`
_PREFIXES = (GRADIENT, NEW)


def gradient_name(name: str) -> str:
    """What the gradient of the value named `name` is called (nothing for an unnamed value).  `grad`, not
    `d`: models name their own values `d_loss` (a discriminator's)."""
    return f"{GRADIENT}{name}" if name else ""


def identifier(name: str, limit: int = 28) -> str:
    """An identifier fragment for a value's name: `grad:h.weight` -> `grad_h_weight`.  A long name keeps its
    end (`..._h_weight_exp_avg_sq` tells the most), cut at a word, and never loses its prefix."""
    prefix = next((p for p in _PREFIXES if name.startswith(p)), "")
    body = safe_name(name.removeprefix(prefix), 200)
    if len(body) > limit:
        body = body[-limit:]
        body = body[body.index("_") + 1:] if "_" in body else body
    return "_".join(part for part in (safe_name(prefix), body) if part)


def value_name(graph: Graph, node_id: int, output_names: dict[int, str] | None = None) -> str:
    """The name of node `node_id`'s value: an input's own, the step's name for an output, else the binding
    that computes it, else its op."""
    n = graph.node(node_id)
    if n.op is Op.INPUT:
        return n.attrs["name"]
    return (output_names or {}).get(node_id) or n.name or n.op.value


def buffer_name(graph: Graph, node_id: int, output_names: dict[int, str]) -> str:
    """A kernel's pointer to the value of node `node_id`: `p66_grad_logits` (the id keeps it unique)."""
    label = identifier(value_name(graph, node_id, output_names))
    return f"p{node_id}_{label}" if label else f"p{node_id}"


def shared_scope(a: str, b: str) -> str:
    """The name of one value two bindings compute alike: the scope they share (`optimizer` of
    `optimizer.h.weight` and `optimizer.logits.bias`), else the first's."""
    pa, pb = a.split("."), b.split(".")
    k = next((k for k, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
    return ".".join(pa[:k]) or a


def arena_name(graph: Graph, j: int, nodes: Sequence[int], output_names: dict[int, str]) -> str:
    """A multi-tensor kernel's pointer to its operand `j`, values laid out back to back, one per parameter:
    `arena3_params`, `arena1_grads`, else by the end their names share (`arena0_exp_avg` of
    `optim.loss.h.weight.exp_avg`, ..., `arena4_new_exp_avg` of their new values)."""
    return f"arena{j}_{_shared_end(graph, nodes, output_names)}".rstrip("_")


def _shared_end(graph: Graph, nodes: Sequence[int], output_names: dict[int, str]) -> str:
    if all(graph.node(i).op is Op.INPUT and graph.node(i).attrs["role"] == "param" for i in nodes):
        return "params"
    names = [value_name(graph, i, output_names) for i in nodes]
    prefix = next((p for p in _PREFIXES if all(name.startswith(p) for name in names)), "")
    shared: list[str] = []
    for ends in zip(*(reversed(name.removeprefix(prefix).split(".")) for name in names)):
        if len(set(ends)) > 1:
            break
        shared.insert(0, ends[0])
    if not shared:
        return "grads" if prefix == GRADIENT else identifier(names[0], 24)
    return identifier(prefix + ".".join(shared), 24)


def update_label(names: Sequence[str]) -> str:
    """`update_h_weight` for a kernel that writes the new h.weight; `update_h_bias_and_logits_bias`,
    `update_h_weight_and_3_more` for several (plan.txt lists them all)."""
    first = identifier(names[0], 40)
    if len(names) == 1:
        return f"update_{first}"
    second = identifier(names[1], 40)
    if len(names) == 2 and len(first) + len(second) <= 40:
        return f"update_{first}_and_{second}"
    return f"update_{first}_and_{len(names) - 1}_more"


def kernel_name(graph: Graph, k: int, members: Sequence[int], nodes: Sequence[Node], params: Sequence[str],
                others: Sequence[str]) -> str:
    """`k3_fc1_matmul_bias_relu`: position, the value it computes (`grad_fc1` in the backward pass), what
    it does (`nodes`: what it computes, its own pass's ops first).  A kernel that updates parameters
    (`params`) is named by them, `k8_update_h_weight`, whatever else it computes (their gradients); one
    that updates other inputs (`others`: the random step) says so at the end."""
    if params:
        return f"k{k}_{update_label(params)}"
    anchor = graph.node(members[0])
    words: list[str] = []
    for node in sorted(nodes, key=lambda n: n.phase is not anchor.phase):
        for w in _op_words(graph, node):
            if w not in words:
                words.append(w)
    computed = [n for n in nodes if n.op is not Op.INPUT]
    if all(n.op is Op.CONST for n in computed):
        words = ["fill"]
    elif all(n.op in GroupOp.Movement or n.op is Op.CONST for n in computed):
        words = ["copy"]    # lays a view out in memory (heads merged, a transpose made contiguous)
    parts = [f"k{k}", identifier(anchor.name, 32), "_".join(words[:4]), update_label(others) if others else ""]
    return "_".join(part for part in parts if part)


def random_kind(n: Node) -> str:
    """What a `rand` node draws for: the built-in that made it (`dropout`, `randn_like`, `bernoulli`)."""
    return n.attrs["kind"]


def _op_words(graph: Graph, n: Node) -> list[str]:
    if n.op in GroupOp.Region:   # `lstm.body.vjp` -> lstm_vjp_scan
        parts = [p for p in n.attrs["body"].name.split(".") if p and p != "body"]
        return [safe_name(p, 12) for p in parts[:2]] + [n.op.value]
    if n.op in GroupOp.Composite:   # attention_0_sdpa_vjp
        return [n.attrs["composite"]]
    if n.op is Op.ADD and any(graph.node(i).op is Op.BROADCAST and graph.node(graph.node(i).inputs[0]).op
                              is Op.INPUT for i in n.inputs):
        return ["bias"]
    if n.op is Op.RAND:
        return [random_kind(n)]
    if n.op in GroupOp.Contraction or n.op in (Op.SUM, Op.MAX, Op.MIN, Op.ARGMAX, Op.RELU, Op.EXP, Op.LOG,
                                                Op.TANH, Op.SIGMOID, Op.SCATTER_ADD, Op.GATHER, Op.ERF,
                                                Op.ALL_REDUCE):
        return [n.op.value]
    return []
