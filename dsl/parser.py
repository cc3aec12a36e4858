"""Parsing: `.dln` text -> `dln.dsl.ast.Module`, or diagnostics.

The grammar lives in grammar.lark (LALR, positions on).  A Lark `Transformer`
(the non-recursive one: a sum of thousands of terms is a deep tree) turns the
parse tree into AST dataclasses; syntax errors become diagnostics
that name the tokens the parser would have accepted, in words.  After a
syntax error the parser blanks out the declaration that holds it and parses
the rest again, so one run reports an error per broken declaration.
"""

from __future__ import annotations

import functools
import math
import re
import stat
from dataclasses import fields
from pathlib import Path

from lark import Lark, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.visitors import Transformer_NonRecursive

from dln.dsl import ast, tables
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Source, Span

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")
MAX_SYNTAX_ERRORS = 10
# How deep expressions and statements may nest.  The compiler walks them recursively, on Python's stack
# (about 1,000 frames, a few a level): past this, a program is an error at the place it goes too deep,
# not a crash.  Chains of operators and pipes (`x + x + ... + x`, `x -> f -> g`) and parentheses do not
# count: the compiler walks those in a loop, so a sum of thousands of terms compiles.
MAX_NESTING = 100

# Integers are 64-bit: sizes, indices and i64 constants.  Larger literals would reach
# float conversions (`1 / sqrt(in_features)`) that overflow.
INT_LIMIT = 2 ** 63


def lark_options() -> dict:
    """How the grammar is built (the shipped tables are built so too: dsl/tables.py)."""
    return {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True,
            "lexer_callbacks": {"NAME": _reserve_keyword}}


@functools.cache
def _lark() -> Lark:
    grammar = GRAMMAR_PATH.read_text()
    options = lark_options()
    parser = tables.load(grammar, options["lexer_callbacks"])
    if parser is None:
        parser = Lark(grammar, **options)
        tables.save(grammar, parser)
    KEYWORDS.update({t.pattern.value: t.name for t in parser.terminals
                     if t.pattern.type == "str" and re.fullmatch(r"[A-Za-z_]\w*", t.pattern.value)})
    return parser


# The keywords of LANGUAGE.md §2 (`model` -> MODEL), read from the grammar's literal terminals.
KEYWORDS: dict[str, str] = {}


def _reserve_keyword(tok: Token) -> Token:
    """Keywords are reserved.  Lark's contextual lexer reads `model` as a NAME where
    the keyword cannot follow (`model = relu(x)`); give it back its keyword type, so
    the parser rejects it there.  Names that merely start with one (`inputs`) stay names."""
    kind = KEYWORDS.get(tok.value)
    return Token.new_borrow_pos(kind, tok.value, tok) if kind is not None else tok


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Parse one file.  Raises `DlnError` with every syntax error found."""
    # A byte-order mark (editors on Windows write one) is not part of the program: columns start after it.
    text = text.removeprefix("\ufeff")
    source = Source(path, text)
    diagnostics: list[Diagnostic] = []
    work = text
    tree = None
    while tree is None:
        try:
            tree = _lark().parse(work)
        except UnexpectedInput as e:
            diagnostics.append(_syntax_diagnostic(e, source))
            blanked = _blank_declaration(work, _error_offset(e, work))
            if blanked == work or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                break
            work = blanked
    if diagnostics:
        raise DlnError(diagnostics)
    try:
        decls = _ToAst(source).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, DlnError):
            raise e.orig_exc from None
        raise
    too_deep = _too_deep(decls)
    if too_deep is not None:
        raise DlnError(Diagnostic("E0313", f"this nests more than {MAX_NESTING} levels deep", too_deep.span, (
            Note("bind the inner parts to names first: h = ...; y = f(h)"),)))
    return ast.Module(source, tuple(decls))


def _too_deep(decls: list) -> object | None:
    """The first node nested more than MAX_NESTING levels deep, not counting the links of chains."""
    stack: list[tuple[object, int]] = [(d, 0) for d in reversed(decls)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return node
        children: list[object] = []
        for f in fields(node):
            value = getattr(node, f.name)
            children.extend(value if isinstance(value, tuple) else (value,))
        for child in reversed(children):
            if hasattr(child, "__dataclass_fields__") and not isinstance(child, (Span, ast.Ident)):
                stack.append((child, depth if ast.chain_next(node) is child else depth + 1))
    return None


def parse_file(path: str | Path) -> ast.Module:
    """Parse the file at `path`: a readable regular file, else E0702 naming it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: {e.strerror or e}")) from None
    if stat.S_ISDIR(mode):
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: it is a directory, not a .dln file"))
    if not stat.S_ISREG(mode):  # a device (/dev/null, a terminal) or a pipe: no program text to read
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: it is not a regular file"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: {getattr(e, 'strerror', None) or e}")) from None
    return parse(text, str(path))


# ---- syntax errors ---------------------------------------------------------------

# Terminals the parser may expect, in words.  Anonymous terminals ("(", "model")
# are shown as their text.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "COMPARE": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '%' or '@'",
    "RANGE": "'..'",
    "ELLIPSIS": "'...'",
    "$END": "end of file",
}
# How an unexpected token of these kinds is shown: "unexpected integer 2".
_TOKEN_WORDS = {"NAME": "name", "INT": "integer", "FLOAT": "number", "STRING": "string"}
# When the parser would accept any of these, it is waiting for an expression.
_EXPRESSION_STARTS = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "LBRACE", "MINUS", "NOT", "TRUE", "FALSE"}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    for t in _lark().terminals:
        if t.name == name and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return name.lower()


_OPERATORS = {"'*', '/', '%' or '@'", "'+' or '-'", "a comparison", "'**'", "'->'", "'and'", "'or'", "'('", "'['"}
_STATEMENT_STARTS = {"'input'", "'param'", "'output'", "'repeat'", "'return'"}


def _expected_words(expected: set[str]) -> list[str]:
    """The tokens a parser state accepts, in words, with the usual groups collapsed."""
    words = {_describe_terminal(t) for t in expected if t not in _EXPRESSION_STARTS or not {"NAME", "INT", "FLOAT"} <= expected}
    grouped: list[str] = []
    if {"NAME", "INT", "FLOAT"} <= expected:
        grouped.append("an expression")
    if len(words & _OPERATORS) >= 3:
        words -= _OPERATORS
        grouped.append("an operator")
    if _STATEMENT_STARTS <= words:
        words -= _STATEMENT_STARTS | {"a name", "';'"}
        grouped.append("a statement")
    return grouped + sorted(words)


def _join_words(words: list[str]) -> str:
    if len(words) > 8:
        words = words[:7] + [f"{len(words) - 7} more"]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_diagnostic(e: UnexpectedInput, source: Source) -> Diagnostic:
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        tok = e.token
        try:
            expected = set(e.interactive_parser.accepts())
        except Exception:  # accepts() replays the parser; fall back on the plain set
            expected = set(e.expected)
        span = Span(source, tok.line, tok.column, tok.end_line or tok.line,
                    tok.end_column or tok.column + len(tok))
        if tok.type in ("NAME", "STRING"):
            shown = f"{_TOKEN_WORDS[tok.type]} {_quote(str(tok))}"
        elif tok.type in _TOKEN_WORDS:
            shown = f"{_TOKEN_WORDS[tok.type]} {tok}"
        else:
            shown = f"'{tok}'"
        notes = [Note("expected " + _join_words(_expected_words(expected)))]
        if tok.type in _DECL_KEYWORDS and "RBRACE" in expected and tok.column == 1:
            notes.append(Note(f"is a '}}' missing before this {tok}?"))
        elif tok.value in KEYWORDS and "NAME" in expected:
            notes.append(Note(f"'{tok}' is a keyword and cannot be used as a name"))
        return Diagnostic("E0101", f"unexpected {shown}", span, tuple(notes))
    if isinstance(e, UnexpectedCharacters):
        span = Span(source, e.line, e.column, e.line, e.column + 1)
        char = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else "?"
        hint = ()
        if char == "'":
            hint = (Note("strings use double quotes: \"...\""),)
        return Diagnostic("E0102", f"unexpected character {char!r}", span, hint)
    # End of file: point at the last character of the text.
    expected = set(getattr(e, "expected", None) or [])
    if isinstance(e, UnexpectedToken):
        try:
            expected = set(e.interactive_parser.accepts())
        except Exception:
            expected = set(e.expected)
    line = source.text.rstrip().count("\n") + 1
    col = len(source.line_text(line).rstrip()) + 1
    span = Span(source, line, max(col - 1, 1), line, col)
    notes = (Note("expected " + _join_words(_expected_words(expected - {"$END"}))),) if expected - {"$END"} else ()
    return Diagnostic("E0103", "unexpected end of file", span, notes)


def _shorten(text: str) -> str:
    """A long literal as a message shows it: its first and last digits."""
    return text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def _quote(text: str) -> str:
    """A token as shown in a message: names in single quotes, strings as written."""
    return text if text.startswith('"') else f"'{text}'"


def _error_offset(e: UnexpectedInput, text: str) -> int:
    if isinstance(e, UnexpectedToken):
        return e.token.start_pos if e.token.start_pos is not None else len(text)
    if isinstance(e, UnexpectedCharacters):
        return e.pos_in_stream
    return len(text)


_DECL_KEYWORDS = {"MODEL", "BLOCK", "TRAIN", "IMPORT"}
_DECL_START = re.compile(r"^(?:model|block|train|import)\b", re.M)


def _blank_declaration(text: str, offset: int) -> str:
    """`text` with the top-level declaration around `offset` replaced by spaces.

    Declarations are found by their keyword at the start of a line; newlines
    are kept so every later position is unchanged.  An error right at the start
    of a declaration (`train m {` where a statement or `}` was expected) lies in
    the unfinished declaration before it: that one is blanked.
    """
    starts = [m.start() for m in _DECL_START.finditer(text)]
    begin = max([s for s in starts if s < offset or s == offset == starts[0]], default=0)
    end = min([s for s in starts if s > begin], default=len(text))
    blank = re.sub(r"[^\n]", " ", text[begin:end])
    return text[:begin] + blank + text[end:]


# ---- parse tree -> AST -----------------------------------------------------------

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Builds AST nodes; every method receives the node's `meta` for its span."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source

    # -- spans
    def _span(self, meta) -> Span:
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.source, tok.line, tok.column, tok.end_line, tok.end_column)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._tok_span(tok))

    # -- top level
    def start(self, meta, items):
        return [i for i in items if i is not None and not isinstance(i, Token)]

    def import_decl(self, meta, items):
        return ast.Import(self._string(items[0]), self._span(meta))

    def model_decl(self, meta, items):
        name, *rest = items
        body = rest.pop()
        hparams = tuple(h for h in rest if h is not None)
        return ast.Model(self._ident(name), hparams, body, self._span(meta), self.source)

    def hparam(self, meta, items):
        name, type_, default = items
        return ast.HParam(self._ident(name), self._ident(type_), default, self._span(meta))

    def block_decl(self, meta, items):
        name, *rest = items
        body = rest.pop()
        params = tuple(p for p in rest if p is not None)
        return ast.Block(self._ident(name), params, body, self._span(meta), self.source)

    def bparam(self, meta, items):
        name, type_, default = items
        return ast.HParam(self._ident(name), self._ident(type_) if type_ is not None else None,
                          default, self._span(meta))

    def train_decl(self, meta, items):
        name, *rest = items
        settings = tuple(s for s in rest if isinstance(s, ast.Setting))
        objectives = tuple(s for s in rest if isinstance(s, ast.Minimize))
        return ast.Train(self._ident(name) if name is not None else None, settings, objectives, self._span(meta))

    def setting(self, meta, items):
        return ast.Setting(self._ident(items[0]), items[1], self._span(meta))

    def minimize(self, meta, items):
        loss, over, optimizer = items
        return ast.Minimize(self._ident(loss), over or (), optimizer, self._span(meta))

    def over(self, meta, items):
        return tuple(self._ident(t) if t.type == "NAME" else ast.Str(self._string(t), self._tok_span(t))
                     for t in items)

    # -- statements
    def body(self, meta, items):
        return tuple(i for i in items if isinstance(i, ast.Stmt))

    def input_stmt(self, meta, items):
        return ast.Input(self._ident(items[0]), items[1], self._span(meta))

    def param_stmt(self, meta, items):
        return ast.Param(self._ident(items[0]), items[1], items[2], self._span(meta))

    def assign_stmt(self, meta, items):
        *targets, value = items
        return ast.Assign(tuple(self._ident(t) for t in targets), value, self._span(meta))

    def output_stmt(self, meta, items):
        return ast.Output(tuple(items), self._span(meta))

    def output_item(self, meta, items):
        return ast.OutputItem(self._ident(items[0]), items[1])

    def repeat_stmt(self, meta, items):
        var, start, _range, stop, body = items
        return ast.Repeat(self._ident(var), start, stop, body, self._span(meta))

    def return_stmt(self, meta, items):
        return ast.Return(items[0], self._span(meta))

    def type(self, meta, items):
        dtype, *dims = items
        return ast.TypeExpr(self._ident(dtype), tuple(d for d in dims if d is not None), self._span(meta))

    # -- expressions
    def pipe(self, meta, items):
        value, (func, args, kwargs, span) = items
        return ast.Call(func, (value, *args), kwargs, span, piped=True)

    def stage_name(self, meta, items):
        tok = items[0]
        return ast.Name(str(tok), self._tok_span(tok)), (), (), self._span(meta)

    def stage_call(self, meta, items):
        tok, args = items
        positional, keywords = args if args is not None else ((), ())
        return ast.Name(str(tok), self._tok_span(tok)), positional, keywords, self._span(meta)

    def call(self, meta, items):
        func, args = items
        positional, keywords = args if args is not None else ((), ())
        return ast.Call(func, positional, keywords, self._span(meta))

    def args(self, meta, items):
        positional = tuple(a for a in items if not isinstance(a, ast.Keyword))
        keywords = tuple(a for a in items if isinstance(a, ast.Keyword))
        seen_keyword = False
        for a in items:
            if isinstance(a, ast.Keyword):
                seen_keyword = True
            elif seen_keyword:
                raise DlnError(Diagnostic("E0101", "positional argument after a keyword argument", a.span))
        return positional, keywords

    def keyword(self, meta, items):
        return ast.Keyword(self._ident(items[0]), items[1])

    def index(self, meta, items):
        value, *subs = items
        return ast.Index(value, tuple(subs), self._span(meta))

    def slice(self, meta, items):
        start, stop, step = items
        return ast.Slice(start, stop, step, self._span(meta))

    def ellipsis(self, meta, items):
        return ast.EllipsisExpr(self._span(meta))

    def or_op(self, meta, items):
        return ast.Binary("or", items[0], items[1], self._span(meta))

    def and_op(self, meta, items):
        return ast.Binary("and", items[0], items[1], self._span(meta))

    def not_op(self, meta, items):
        return ast.Unary("not", items[0], self._span(meta))

    def compare(self, meta, items):
        return ast.Binary(str(items[1]), items[0], items[2], self._span(meta))

    def binary(self, meta, items):
        return ast.Binary(str(items[1]), items[0], items[2], self._span(meta))

    def neg(self, meta, items):
        return ast.Unary("-", items[0], self._span(meta))

    def power(self, meta, items):
        return ast.Binary("**", items[0], items[1], self._span(meta))

    def name(self, meta, items):
        return ast.Name(str(items[0]), self._span(meta))

    def int(self, meta, items):
        value = int(items[0])
        if value > INT_LIMIT:  # 2**63 itself is allowed: `-9223372036854775808` is an i64
            raise DlnError(Diagnostic("E0104", f"the integer {_shorten(items[0])} is too large", self._span(meta),
                                      (Note("integers are 64-bit: at most 9223372036854775807; "
                                            "a float (1e30) can be larger"),)))
        return ast.Int(value, self._span(meta))

    def float(self, meta, items):
        value = float(items[0])
        if math.isinf(value):
            raise DlnError(Diagnostic("E0104", f"the number {items[0]} is too large", self._span(meta),
                                      (Note("numbers are 64-bit floats: at most about 1.8e308"),)))
        return ast.Float(value, self._span(meta))

    def string(self, meta, items):
        return ast.Str(self._string(items[0]), self._span(meta))

    def true(self, meta, items):
        return ast.Bool(True, self._span(meta))

    def false(self, meta, items):
        return ast.Bool(False, self._span(meta))

    def tuple(self, meta, items):
        return ast.TupleExpr(tuple(i for i in items if i is not None), self._span(meta))

    def list(self, meta, items):
        return ast.ListExpr(tuple(i for i in items if i is not None), self._span(meta))

    def record(self, meta, items):
        return ast.Record(tuple(i for i in items if i is not None), self._span(meta))

    def field(self, meta, items):
        return ast.Field(self._ident(items[0]), items[1])

    def _string(self, tok: Token) -> str:
        body = str(tok)[1:-1]
        out: list[str] = []
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                nxt = body[i + 1]
                if nxt not in _ESCAPES:
                    col = tok.column + 1 + i
                    span = Span(self.source, tok.line, col, tok.line, col + 2)
                    raise DlnError(Diagnostic("E0104", f"unknown escape '\\{nxt}' in string", span,
                                              (Note('strings allow \\", \\\\, \\n and \\t'),)))
                out.append(_ESCAPES[nxt])
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)
