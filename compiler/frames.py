"""What the builder keeps while it runs a body: bindings, frames, poison.

A `Frame` is one body being run: the model, each inlined block, each
application of a model instance (a `repeat` iteration shares its enclosing
frame).  Shared by the statement builder (dln.compiler.build) and the
inlining of blocks and instances (dln.compiler.inline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from dln.compiler.naming import ScopeNames
from dln.compiler.values import Value
from dln.dsl import ast
from dln.dsl.diagnostics import Span


@dataclass
class Binding:
    value: Value
    span: Span | None
    kind: str  # input | param | let | hparam | dim | loop


class Poisoned(Exception):
    """A statement used a name whose own statement failed: stay quiet, it was reported."""


# The value of a name whose statement failed.
POISON = object()


@dataclass(frozen=True)
class Reapplication:
    """A model instance applied again: its parameters exist and must keep their shapes."""

    instance: str        # the instance's scope, `E`
    site: Span           # this application: the argument that differs from the first, else the call
    first: Span | None   # the same place in the first application
    change: str = ""     # what differs: "input x is f32[B, 8] here, f32[B, 16] at the first application"


@dataclass
class Frame:
    env: dict[str, Binding]
    globals: Mapping[str, ast.Model | ast.Block]
    prefix: tuple[str, ...]
    names: ScopeNames
    kind: str                          # model | block | instance
    reapplied: Reapplication | None = None   # set inside a re-applied instance: parameters exist already
    outputs: list[tuple[str, Value, Span]] = field(default_factory=list)
    returned: tuple[Value, Span] | None = None
    top: bool = False                  # the model being built (inputs become graph inputs)

    @property
    def reuse(self) -> bool:
        return self.reapplied is not None
