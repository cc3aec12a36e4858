"""dln.dsl: the `.dln` front end — grammar, AST, parser and diagnostics."""

from dln.dsl import ast
from dln.dsl.diagnostics import CODES, Diagnostic, DlnError, Note, Source, Span, error, render, render_all
from dln.dsl.parser import parse, parse_file

__all__ = [
    "ast", "CODES", "Diagnostic", "DlnError", "Note", "Source", "Span",
    "error", "render", "render_all", "parse", "parse_file",
]
