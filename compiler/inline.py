"""Inlining blocks and applying model instances.

A block call runs the block's body in a fresh frame, its parameters under the
call's scope name (`h.mlp_block_0.*`).  Calling a model makes an instance
(`G = generator(z = 16)`): its hyperparameters and scope.  Applying the
instance (`G(noise)`) runs the model's body under that scope; the first
application makes the parameters, later ones reuse them and must need the
same shapes.

Both expand a declaration inside the one being built, so both check for
recursion: a declaration already being expanded cannot be expanded again
inside itself (it would never end).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from dln.compiler import builtins as lib
from dln.compiler.emit import Tensor
from dln.compiler.frames import POISON, Binding, Frame, Poisoned, Reapplication
from dln.compiler.naming import ScopeNames
from dln.compiler.program import HPARAM_TYPES, check_overrides, coerce_hparam
from dln.compiler.shapes import ShapeError
from dln.compiler.values import DimValue, Instance, TupleValue, Value, describe
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span

if TYPE_CHECKING:
    from dln.compiler.build import ModelBuilder

Args = list[lib.Arg]
Kwargs = dict[str, tuple[lib.Arg, Span]]


# ---- recursion ------------------------------------------------------------------------------------------------

# How deep blocks and instances may expand inside one another.  Each expansion takes a dozen frames of
# Python's stack (about 1,000): past this, a program is an error at the call, not a crash.
MAX_EXPANSION_DEPTH = 50


@contextmanager
def expanding(m: "ModelBuilder", decl: ast.Model | ast.Block, site: Span | None) -> Iterator[None]:
    """While `decl`'s body runs (called or applied at `site`), it is on the builder's stack."""
    check_not_recursive(m, decl, site)
    if len(m.expanding) > MAX_EXPANSION_DEPTH:
        outer = " -> ".join(d.name.name for d, _ in m.expanding[1:4])
        raise DlnError(Diagnostic("E0313", f"blocks and instances expand more than {MAX_EXPANSION_DEPTH} levels "
                                           f"deep here", site,
                                  (Note(f"the expansion: {outer} -> ... -> {decl.name.name}"),)))
    m.expanding.append((decl, site))
    try:
        yield
    finally:
        m.expanding.pop()


def check_not_recursive(m: "ModelBuilder", decl: ast.Model | ast.Block, site: Span | None) -> None:
    for k, (active, _) in enumerate(m.expanding):
        if active is decl:
            break
    else:
        return
    chain = [d for d, _ in m.expanding[k:]]
    names = [d.name.name for d in chain] + [decl.name.name]
    through = "" if len(chain) == 1 else " through " + ", ".join(names[1:-1])
    if isinstance(decl, ast.Block):
        message = f"block {decl.name.name} calls itself{through}"
        why = "a block is inlined where it is called, so it cannot call itself"
    else:
        message = f"model {decl.name.name} makes an instance of itself{through}"
        why = "an instance holds the model's whole network, so a model cannot contain itself"
    raise DlnError(Diagnostic("E0311", message, site, (Note(f"the cycle: {' -> '.join(names)}", decl.name.span),
                                                       Note(why))))


# ---- blocks -----------------------------------------------------------------------------------------------------

def call_block(m: "ModelBuilder", frame: Frame, decl: ast.Block, args: Args, kwargs: Kwargs, call: ast.Call,
               scope_name: str) -> Value:
    env: dict[str, Binding] = {}
    params = list(decl.params)
    if len(args) > len(params):
        raise DlnError(Diagnostic("E0304", f"block {decl.name.name} takes {_count(len(params), 'argument')}, got "
                                           f"{len(args)}", args[len(params)].span,
                                  (Note("declared here", decl.name.span),)))
    given: dict[str, tuple[lib.Arg, Span | None]] = {p.name.name: (a, None) for p, a in zip(params, args)}
    for key, (a, key_span) in kwargs.items():
        if key not in {p.name.name for p in params}:
            raise DlnError(Diagnostic("E0305", f"block {decl.name.name} has no argument '{key}'", key_span,
                                      (Note("declared here", decl.name.span),)))
        if key in given:
            raise DlnError(Diagnostic("E0306", f"argument '{key}' given twice", key_span))
        given[key] = (a, key_span)
    block_globals = m.program.visible(decl.source.path)
    default_frame = Frame(env, block_globals, (), ScopeNames(), "block")
    for p in params:
        if p.name.name in given:
            a = given[p.name.name][0]
            value, span = a.value, a.span
        elif p.default is not None:
            value, span = m.eval.eval(default_frame, p.default), p.default.span
        else:
            raise DlnError(Diagnostic("E0304", f"block {decl.name.name} needs the argument '{p.name.name}'",
                                      call.span, (Note("declared here", decl.name.span),)))
        env[p.name.name] = Binding(_check_block_arg(decl, p, value, span), p.name.span, "let")
    inner = Frame(env, block_globals, frame.prefix + (scope_name,), ScopeNames(), "block",
                  reapplied=frame.reapplied)
    with expanding(m, decl, call.span):
        m.run_body(inner, decl.body)
    if inner.returned is None:
        if not any(isinstance(s, ast.Return) for s in decl.body):
            raise DlnError(Diagnostic("E0310", f"block {decl.name.name} does not return a value", decl.name.span))
        raise Poisoned()
    return inner.returned[0]


def _check_block_arg(decl: ast.Block, p: ast.HParam, value: Value, span: Span) -> Value:
    if p.type is None:
        if not isinstance(value, Tensor):
            raise DlnError(Diagnostic("E0307", f"argument '{p.name.name}' of block {decl.name.name} must be a "
                                               f"tensor, got {describe(value)}", span,
                                      (Note("scalar arguments are declared with a type, e.g. dim: int", p.span),)))
        return value
    if p.type.name not in HPARAM_TYPES:
        raise DlnError(Diagnostic("E0401", f"unknown argument type '{p.type.name}'", p.type.span,
                                  (Note("types: " + ", ".join(HPARAM_TYPES)),)))
    if isinstance(value, DimValue) and isinstance(value.dim, int):
        value = value.dim
    try:
        return coerce_hparam(p.type.name, value, from_text=False)
    except ValueError:
        article = "an int" if p.type.name == "int" else f"a {p.type.name}"
        raise DlnError(Diagnostic("E0401", f"argument '{p.name.name}' of block {decl.name.name} must be "
                                           f"{article}, got {describe(value)}", span,
                                  (Note("declared here", p.span),))) from None


# ---- model instances ----------------------------------------------------------------------------------------

def make_instance(m: "ModelBuilder", frame: Frame, decl: ast.Model, args: Args, kwargs: Kwargs, call: ast.Call,
                  scope_name: str) -> Instance:
    check_not_recursive(m, decl, call.span)
    if args:
        raise DlnError(Diagnostic("E0304", f"calling model {decl.name.name} makes an instance and takes "
                                           "keyword hyperparameters only", args[0].span,
                                  (Note(f"apply the instance to tensors: G = {decl.name.name}(...); G(x)"),)))
    values = {k: a.value for k, (a, _) in kwargs.items()}
    spans = {k: s for k, (_, s) in kwargs.items()}
    check_overrides(decl, values, spans, call.span)
    hparams = m.resolve_hparams(decl, values, spans)
    prefix = frame.prefix + (scope_name,)
    m.instances[".".join(prefix)] = prefix
    return Instance(decl, hparams, prefix, call.span)


def apply_instance(m: "ModelBuilder", frame: Frame, inst: Instance, args: Args, kwargs: Kwargs,
                   call: ast.Call) -> Value:
    decl = inst.decl
    inputs = [s for s in decl.body if isinstance(s, ast.Input)]
    if len(args) > len(inputs):
        raise DlnError(Diagnostic("E0304", f"model {decl.name.name} has {_count(len(inputs), 'input')}, got "
                                           f"{_count(len(args), 'argument')}", args[len(inputs)].span))
    given = {i.name.name: a for i, a in zip(inputs, args)}
    for key, (a, key_span) in kwargs.items():
        if key not in {i.name.name for i in inputs}:
            raise DlnError(Diagnostic("E0305", f"model {decl.name.name} has no input '{key}'", key_span))
        given[key] = a
    env = {k: Binding(v, hparam_span(decl, k), "hparam") for k, v in inst.hparams.items()}
    # Inside an instance that is itself re-applied, every parameter exists already: keep that
    # outer application as the place to blame.
    reapplied = frame.reapplied
    if reapplied is None and inst.applications > 0:
        reapplied = _reapplication(inst, given, call)
    inner = Frame(env, m.program.visible(decl.source.path), inst.prefix, ScopeNames(), "instance",
                  reapplied=reapplied)
    for i in inputs:
        if i.name.name not in given:
            raise DlnError(Diagnostic("E0304", f"model {decl.name.name} needs the input '{i.name.name}'",
                                      call.span, (Note("declared here", i.span),)))
        _bind_instance_input(m, inner, decl, i, given[i.name.name])
    if inst.applications == 0:
        inst.first_application = call.span
        inst.first_inputs = {k: (a.value.type, a.span) for k, a in given.items() if isinstance(a.value, Tensor)}
    inst.applications += 1
    with expanding(m, decl, call.span):
        m.run_body(inner, decl.body)
    outs = [v for _, v, _ in inner.outputs]
    if any(v is POISON for v in outs):
        raise Poisoned()
    if not outs:
        raise DlnError(Diagnostic("E0310", f"model {decl.name.name} has no output to return", call.span))
    return outs[0] if len(outs) == 1 else TupleValue(tuple(outs))


def _reapplication(inst: Instance, given: dict[str, lib.Arg], call: ast.Call) -> Reapplication:
    """A later application of `inst`, blaming the first input whose type differs from the first time."""
    name = ".".join(inst.prefix)
    for key, (first_type, first_span) in inst.first_inputs.items():
        a = given.get(key)
        if a is not None and isinstance(a.value, Tensor) and a.value.type != first_type:
            return Reapplication(name, a.span, first_span, f"input {key} is {a.value.type} here, {first_type} at the "
                                                           "first application")
    return Reapplication(name, call.span, inst.first_application)


def _bind_instance_input(m: "ModelBuilder", frame: Frame, decl: ast.Model, stmt: ast.Input, arg: lib.Arg) -> None:
    value = arg.value
    if not isinstance(value, Tensor):
        raise DlnError(Diagnostic("E0307", f"input '{stmt.name.name}' of {decl.name.name} must be a tensor, "
                                           f"got {describe(value)}", arg.span))
    # Declared dimension names not known yet bind to the argument's sizes.
    for d, actual in zip(stmt.type.dims, value.shape):
        if isinstance(d, ast.Name) and d.id not in frame.env and d.id not in frame.globals:
            frame.env[d.id] = Binding(DimValue(actual), d.span, "dim")
    declared = m.eval_type(frame, stmt.type, introduce=False)
    mismatch = Diagnostic("E0201", f"input '{stmt.name.name}' of {decl.name.name} is declared {declared}, "
                                   f"got {value.type}", arg.span, (Note("declared here", stmt.span),))
    if declared.rank != value.rank or declared.dtype is not value.dtype:
        raise DlnError(mismatch)
    with m.b.at(loc=arg.span):
        for want, got in zip(declared.shape, value.shape):
            try:
                m.b.shapes.unify(want, got, "E0201", mismatch.message)
            except ShapeError:
                raise DlnError(mismatch) from None
    frame.env[stmt.name.name] = Binding(value, stmt.name.span, "input")


def reapplied_mismatch(frame: Frame, name: str, made: str, needed: str, made_at: Span | None) -> DlnError:
    """An instance applied again to inputs that need other parameter shapes than the first time."""
    r = frame.reapplied
    assert r is not None
    notes = [Note(r.change)] if r.change else []
    notes += [Note("first applied here", r.first)] if r.first is not None else []
    notes += [Note(f"{name} is made here, as {made}; this application would need {needed}", made_at),
              Note("an instance shares its parameters between applications, so every application needs inputs "
                   "of the same sizes")]
    return DlnError(Diagnostic("E0201", f"instance {r.instance} is applied to inputs of other sizes than at its "
                                        "first application", r.site, tuple(notes)))


def hparam_span(decl: ast.Model, name: str) -> Span | None:
    for h in decl.hparams:
        if h.name.name == name:
            return h.span
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
