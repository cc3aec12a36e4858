"""Diagnostics: errors as values with source locations, rendered in one form.

Every error a user can cause (syntax, names, types, shapes, data) becomes a
`Diagnostic` carrying a `Span`.  `DlnError` carries one or more of them up to
the edge (CLI, Python API), where `render` prints them like this::

    error[E0203]: matrix product needs matching inner dimensions: [B, 784] @ [512, 256]
      --> examples/mlp.dln:7:14
       |
     7 |     h = x @ W1 + b1
       |         ^^^^^^
       = note: W1 declared at examples/mlp.dln:4:5 as f32[512, 256]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


class Source:
    """The text of one `.dln` file (or of a string given to `dln.compile`)."""

    __slots__ = ("path", "text", "_line_starts")

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                starts.append(i + 1)
        self._line_starts = starts

    def line_text(self, line: int) -> str:
        """The text of 1-based `line`, without its newline."""
        if not 1 <= line <= len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        import bisect

        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def __repr__(self) -> str:
        return f"Source({self.path!r})"


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns are 1-based, `end_col` exclusive."""

    source: Source = field(compare=False, hash=False)
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"

    def to(self, other: "Span | None") -> "Span":
        """The span from the start of `self` to the end of `other`."""
        if other is None or other.source is not self.source:
            return self
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)


@dataclass(frozen=True, slots=True)
class Note:
    message: str
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    notes: tuple[Note, ...] = ()
    severity: str = "error"

    def with_note(self, message: str, span: Span | None = None) -> "Diagnostic":
        return Diagnostic(self.code, self.message, self.span, self.notes + (Note(message, span),), self.severity)


class DlnError(Exception):
    """One or more user-facing diagnostics.  Never carries an internal failure."""

    def __init__(self, diagnostics: Diagnostic | Iterable[Diagnostic]) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__(render_all(self.diagnostics))

    @property
    def code(self) -> str:
        return self.diagnostics[0].code if self.diagnostics else ""


def dedupe(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Each diagnostic once (one mistake reached twice: a block inlined twice, a model built twice)."""
    seen: set[tuple] = set()
    out = []
    for d in diagnostics:
        key = (d.code, d.message, str(d.span))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def listing(names: list[str], shown: int = 8) -> str:
    """Names for a note, the first `shown` of them: `a, b, ... (40 in all)`."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def error(code: str, message: str, span: Span | None = None, *notes: Note) -> DlnError:
    """Shorthand for raising a single diagnostic: `raise error("E0301", "...", span)`."""
    return DlnError(Diagnostic(code, message, span, tuple(notes)))


def render(d: Diagnostic) -> str:
    lines = [f"{d.severity}[{d.code}]: {d.message}"]
    if d.span is not None:
        lines += _snippet(d.span)
    for note in d.notes:
        where = ""
        if note.span is not None and str(note.span) not in note.message:
            where = f" (at {note.span})"
        lines.append(f"   = note: {note.message}{where}")
    return "\n".join(lines)


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    diagnostics = list(diagnostics)
    text = "\n\n".join(render(d) for d in diagnostics)
    errors = sum(d.severity == "error" for d in diagnostics)
    if errors > 1:
        text += f"\n\n{errors} errors"
    return text


def _snippet(span: Span) -> list[str]:
    line_text = span.source.line_text(span.line).expandtabs(4)
    width = len(str(span.line))
    gutter = " " * (width + 1)
    end_col = span.end_col if span.end_line == span.line else len(line_text) + 1
    carets = max(1, min(end_col, len(line_text) + 1) - span.col)
    return [
        f"{' ' * width}--> {span}",
        f"{gutter}|",
        f"{span.line} | {line_text}",
        f"{gutter}| {' ' * (span.col - 1)}{'^' * carets}",
    ]


# The catalogue of error codes, documented in docs/errors.md.
CODES: dict[str, str] = {
    "E0101": "syntax: unexpected token",
    "E0102": "syntax: unexpected character",
    "E0103": "syntax: unexpected end of file",
    "E0104": "invalid literal",
    "E0105": "unknown element type",
    "E0201": "shapes do not broadcast",
    "E0202": "bad axis or rank",
    "E0203": "matrix product dimensions do not match",
    "E0204": "reshape does not preserve the number of elements",
    "E0205": "symbolic dimensions disagree",
    "E0206": "element types do not match",
    "E0207": "index or slice out of range",
    "E0208": "invalid argument value",
    "E0209": "window larger than its padded input",
    "E0301": "unknown name",
    "E0302": "unknown function or layer",
    "E0303": "not available yet",
    "E0304": "wrong number of arguments",
    "E0305": "unknown keyword argument",
    "E0306": "duplicate definition",
    "E0307": "wrong kind of value",
    "E0308": "a binding reuses a dimension's name",
    "E0309": "destructuring count mismatch",
    "E0310": "statement not allowed here",
    "E0311": "recursive block or model",
    "E0312": "program too large to compile (a limit)",
    "E0313": "program nests too deeply",
    "E0401": "hyperparameter has the wrong type",
    "E0402": "unknown hyperparameter",
    "E0403": "hyperparameter has no value",
    "E0501": "imported file not found",
    "E0502": "import cycle",
    "E0601": "invalid train setting",
    "E0602": "unknown objective",
    "E0603": "unknown data set or data file",
    "E0701": "input data does not match the model",
    "E0702": "file not found or unreadable",
    "E0703": "weights do not match the model",
    "E0704": "numerical failure during training",
    "E0705": "class index out of range",
    "E0706": "a value does not fit in memory",
    "E0707": "damaged checkpoint",
    "E0708": "an output path cannot be written",
    "E0709": "a whole example cannot be split",
    "E0710": "invalid argument to a Python API function",
    "E0714": "an optional package is not installed",
    "E0715": "the model cannot be exported to ONNX",
    "E0716": "an ONNX model has no .dln form",
    "E0720": "data-parallel training failed between ranks",
}
