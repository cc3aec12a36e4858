"""What a build produces: a model's graph and what the runtime needs to feed and read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dln.compiler.values import InitSpec
from dln.compiler.ir import Graph, TensorType
from dln.dsl import ast
from dln.dsl.diagnostics import Span


@dataclass(frozen=True)
class InputInfo:
    name: str
    type: TensorType
    span: Span
    node: int


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: TensorType
    init: InitSpec
    span: Span
    node: int


@dataclass(frozen=True)
class StateInfo:
    """A piece of model state (a running statistic): read as a graph input, never trained; a build
    in which a layer assigns it a new value lists that value in `BuiltModel.updates`."""

    name: str
    type: TensorType
    init: InitSpec
    span: Span
    node: int


@dataclass(frozen=True)
class CarryInfo:
    """A recurrent layer's state carried from one run to the next (a build with `stream=True`): read as
    the graph input `name`, its value after the run the output `carry:<name>`.  Zeros start a stream."""

    name: str
    type: TensorType
    span: Span
    node: int


@dataclass
class BuiltModel:
    """A model's graph and what the runtime needs to feed and read it."""

    name: str
    graph: Graph                      # outputs: the declared outputs
    values: dict[str, int]            # every tensor bound at the model's top level
    inputs: list[InputInfo]
    params: list[ParamInfo]
    symbols: dict[str, Span]          # symbolic dimensions and where they were introduced
    metrics: dict[str, int]           # e.g. "accuracy" -> node
    instances: dict[str, tuple[str, ...]]
    hparams: dict[str, Any]
    training: bool
    decl: ast.Model
    loss_targets: tuple[int, ...] = ()  # the tensors losses take as their target (the runtime keeps
                                        # the inputs they come from out of augmentation)
    state: list[StateInfo] = field(default_factory=list)
    updates: dict[str, int] = field(default_factory=dict)   # state name -> the node of its new value
    carries: list[CarryInfo] = field(default_factory=list)  # stream=True: recurrent states run to run
    carried: dict[str, int] = field(default_factory=dict)   # carry name -> the node of its final value

    def carry_outputs(self) -> list[tuple[str, int]]:
        """The final value of every carried recurrent state, as the outputs `carry:<name>`."""
        return [(f"carry:{name}", node) for name, node in self.carried.items()]

    def state_outputs(self) -> list[tuple[str, int]]:
        """The new value of every assigned state, as the outputs `new:<name>` a run donates to it."""
        return [(f"new:{name}", node) for name, node in self.updates.items()]

    def state_donations(self) -> dict[str, str]:
        return {f"new:{name}": name for name in self.updates}

    @property
    def outputs(self) -> list[str]:
        return self.graph.output_names
