"""Bounds on what one compile may build.

`repeat i in 0..1000000000` is a valid program that would unroll until
memory runs out.  A compile stops instead, with a diagnostic at the line
that went over, saying which limit and how to raise it.  The limits are
configuration: read at the edge (`dln.compile(..., max_nodes=...)`, the
CLI's `--max-nodes`) and passed down to the builder; the defaults leave
real models far below them (a 24-block transformer: 24 repeat iterations,
about 2,800 forward nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 100_000      # nodes of one model's forward graph
    max_unroll: int = 10_000      # `repeat` iterations of one model, nested and inlined ones included


DEFAULT_LIMITS = Limits()

# How each limit is raised, from Python and from the command line.
_HOW = {"max_nodes": "dln.compile(..., max_nodes=N) or --max-nodes N",
        "max_unroll": "dln.compile(..., max_unroll=N) or --max-unroll N"}


class LimitExceeded(DlnError):
    """A compile went over a limit: it stops at once, not at the end of the statement, since the
    rest of a huge loop would only go over again."""


def exceeded(limit: str, value: int, message: str, span: Span | None) -> LimitExceeded:
    return LimitExceeded(Diagnostic("E0312", message, span, (
        Note(f"the limit is {limit} = {value:,}; raise it with {_HOW[limit]} if this is meant"),)))


def too_deep(span: Span | None) -> LimitExceeded:
    """The program nests deeper than Python's stack allows (blocks in blocks in expressions ...)."""
    return LimitExceeded(Diagnostic("E0313", "this statement nests too deeply to compile", span, (
        Note("bind inner parts to names, or call fewer blocks inside one another"),)))
