"""Compile-time values of the front end.

An expression evaluates to a tensor (`emit.Tensor`, a node of the graph being
built) or to something known while compiling: a number, a string, a
dimension, a tuple, a reference to a function, block or model, a model
instance, an initializer.  Only tensors reach the IR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, TensorType
from dln.compiler.symbolic import Dim
from dln.dsl import ast
from dln.dsl.diagnostics import Span


@dataclass(frozen=True, slots=True)
class DimValue:
    """A dimension used as an integer in an expression (`T`, `x / B`, `0:T-1`)."""

    dim: Dim


@dataclass(frozen=True, slots=True)
class TupleValue:
    items: tuple["Value", ...]


@dataclass(frozen=True, slots=True)
class ListValue:
    items: tuple["Value", ...]


@dataclass(frozen=True, slots=True)
class RecordValue:
    fields: tuple[tuple[str, "Value", Span], ...]


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """A built-in named without a call (`x -> relu`, `init = xavier_uniform`)."""

    name: str


@dataclass(frozen=True, slots=True)
class BlockRef:
    decl: ast.Block


@dataclass(frozen=True, slots=True)
class ModelRef:
    decl: ast.Model


@dataclass(eq=False)
class Instance:
    """`G = generator(z = 16)`: a model with its own parameters under scope `G`."""

    decl: ast.Model
    hparams: dict[str, Any]
    prefix: tuple[str, ...]
    span: Span
    applications: int = 0
    first_application: Span | None = None
    first_inputs: dict[str, tuple[TensorType, Span]] = field(default_factory=dict)  # input -> (type, argument span)


@dataclass(frozen=True, slots=True)
class InitSpec:
    """An initializer: `xavier_uniform`, `normal(0.0, 0.02)`."""

    kind: str
    args: tuple[tuple[str, float], ...] = ()

    def arg(self, name: str) -> float:
        return dict(self.args)[name]

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}(" + ", ".join(f"{k}={v:g}" for k, v in self.args) + ")"


@dataclass(frozen=True, slots=True)
class DTypeValue:
    dtype: DType


@dataclass(frozen=True, slots=True)
class TrainValue:
    """A value that only means something in a `train` section (`dataset("digits")`, `adam(...)`)."""

    kind: str
    args: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)


Value = Union[Tensor, int, float, bool, str, DimValue, TupleValue, ListValue, RecordValue, FunctionRef,
              BlockRef, ModelRef, Instance, InitSpec, DTypeValue, TrainValue, None]


def dln_string(s: str) -> str:
    """A string as it is written in a .dln file."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def describe(v: Value) -> str:
    """What a value is, for error messages."""
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return f"a bool ({'true' if v else 'false'})"
    if isinstance(v, int):
        return f"an int ({v})"
    if isinstance(v, float):
        return f"a float ({v:g})"
    if isinstance(v, str):
        return f"a string ({dln_string(v)})"
    if isinstance(v, DimValue):
        return f"the dimension {v.dim}"
    if isinstance(v, TupleValue):
        return f"a tuple of {len(v.items)}"
    if isinstance(v, ListValue):
        return f"a list of {len(v.items)}"
    if isinstance(v, RecordValue):
        return "a record"
    if isinstance(v, FunctionRef):
        return f"the function {v.name}"
    if isinstance(v, BlockRef):
        return f"the block {v.decl.name.name}"
    if isinstance(v, ModelRef):
        return f"the model {v.decl.name.name}"
    if isinstance(v, Instance):
        return f"an instance of model {v.decl.name.name}"
    if isinstance(v, InitSpec):
        return f"the initializer {v}"
    if isinstance(v, DTypeValue):
        return f"the element type {v.dtype}"
    if isinstance(v, TrainValue):
        return f"{v.kind}(...)"
    return "nothing"
