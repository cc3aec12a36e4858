"""A program: the file given, the files it imports, and what each file can see.

`load` parses the root file and every file it imports (paths relative to the
importing file), reports missing files and import cycles, and gives each file
its table of visible models and blocks: its own and those of the files it
imports directly.  Hyperparameter values (defaults, `--set k=v`, keyword
arguments of `dln.compile`) are resolved here too.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dln.compiler.values import describe
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span
from dln.dsl.parser import INT_LIMIT, parse, parse_file

Decl = ast.Model | ast.Block


@dataclass
class Program:
    root: ast.Module
    modules: dict[str, ast.Module] = field(default_factory=dict)
    scopes: dict[str, dict[str, Decl]] = field(default_factory=dict)  # file path -> visible declarations

    @property
    def path(self) -> str:
        return self.root.source.path

    def visible(self, path: str) -> dict[str, Decl]:
        return self.scopes[path]

    @property
    def models(self) -> dict[str, ast.Model]:
        return {k: v for k, v in self.scopes[self.path].items() if isinstance(v, ast.Model)}

    @property
    def local_models(self) -> list[ast.Model]:
        return self.root.models

    def model(self, name: str | None, span: Span | None = None) -> ast.Model:
        """The model called `name`; when None (INTERFACE.md): the file's only model, else the one its
        train section trains, else the one model of the file that no other model uses as an instance."""
        models = self.models
        if name is None:
            own = self.root.models
            if len(own) == 1:
                return own[0]
            trained = {t.model.name for t in self.root.trains if t.model is not None}
            if len(trained) == 1 and next(iter(trained)) in models:
                return models[next(iter(trained))]
            if not own:
                seen = sorted(models)
                notes = (Note(f"name one of the imported models: {', '.join(seen)}"),) if seen else ()
                raise DlnError(Diagnostic("E0301", f"{self.path} declares no model", span, notes))
            roots = root_models(self.root)
            if len(roots) == 1:
                return roots[0]
            candidates = roots or own
            names = ", ".join(m.name.name for m in candidates)
            what = "several models that no other model uses" if roots else "several models"
            # With a span the choice is a train section's (`train { ... }`), else the command line's or Python's.
            how = (f"name it: train {candidates[0].name.name} {{ ... }}" if span is not None else
                   "choose one with --model NAME on the command line or model=\"NAME\" in Python")
            notes = tuple(Note(f"{m.name.name} is declared here", m.name.span) for m in candidates) + (Note(how),)
            raise DlnError(Diagnostic("E0301", f"{self.path} declares {what} ({names}); name one",
                                      span or candidates[0].name.span, notes))
        if name not in models:
            close = difflib.get_close_matches(name, list(models), n=1)
            notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
            raise DlnError(Diagnostic("E0301", f"unknown model '{name}'", span, notes))
        return models[name]


def root_models(module: ast.Module) -> list[ast.Model]:
    """The models of `module` that no other declaration of it names: the candidates for the model a
    file is about when it has several (`enc` and `dec` used by `autoencoder`: `autoencoder`).  A model
    named in a block counts as used: the block makes an instance of it for some model."""
    names = {m.name.name for m in module.models}
    used: set[str] = set()
    for d in (*module.models, *module.blocks):
        own = d.name.name if isinstance(d, ast.Model) else None
        used.update(n for n in ast.names_used(d.body) if n in names and n != own)
    return [m for m in module.models if m.name.name not in used]


def load(text_or_path: str | Path, path: str | None = None) -> Program:
    """Parse a program from a file path (a `Path`, or a string that looks like one) or from source text
    (`path` names it in messages).  A path that is not a readable file is E0702, never read as text."""
    if path is None and (isinstance(text_or_path, Path) or looks_like_path(str(text_or_path))):
        root = parse_file(display_path(Path(text_or_path)))
    else:
        root = parse(str(text_or_path), path or "<string>")
    program = Program(root)
    _load_imports(program, root, stack=[])
    return program


def looks_like_path(s: str) -> bool:
    """Whether `dln.compile(s)` means a file.  Program text that declares anything has a `{`, and text
    on several lines is never a path; of the rest, a name ending in .dln, anything on disk (a directory,
    /dev/null) and a single word (`missing`, `models/mlp`) are paths; `# a comment` or `import "a.dln"`
    is text."""
    if "\n" in s or "{" in s or not s.strip():
        return False
    return s.endswith(".dln") or os.path.exists(s) or not any(c.isspace() or c == '"' for c in s)


def file_key(path: str | Path) -> str:
    """One key per file however its path is spelled (relative, `./`, absolute, through `..`)."""
    text = str(path)
    return text if text.startswith("<") else str(Path(text).resolve())


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the working directory when it lies below it."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _load_imports(program: Program, module: ast.Module, stack: list[str]) -> None:
    """Parse what `module` imports (depth first) and make its scope; `stack` holds the
    keys of the files importing it, for cycles."""
    path = module.source.path
    key = file_key(path)
    program.modules[key] = module
    diagnostics: list[Diagnostic] = _check_signatures(module)
    scope: dict[str, Decl] = {}
    imported: list[ast.Module] = []
    base = Path(path).parent if not path.startswith("<") else Path.cwd()
    for imp in module.imports:
        target = base / imp.path
        target_key, shown = file_key(target), display_path(target)
        chain = stack + [key]
        if target_key in chain:
            files = [program.modules[k].source.path for k in chain[chain.index(target_key):]]
            diagnostics.append(Diagnostic("E0502", f"import cycle: {' -> '.join(files + [shown])}", imp.span))
            continue
        if target_key in program.modules:
            imported.append(program.modules[target_key])
            continue
        if not target.is_file():
            diagnostics.append(Diagnostic("E0501", f"cannot import \"{imp.path}\": no such file {shown}",
                                          imp.span))
            continue
        try:
            sub = parse_file(shown)
            _load_imports(program, sub, chain)
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
            continue
        imported.append(sub)
    for other in imported:
        for d in (*other.models, *other.blocks):
            scope.setdefault(d.name.name, d)
    for d in (*module.models, *module.blocks):
        first = scope.get(d.name.name)
        if first is not None and first.source is module.source:
            diagnostics.append(Diagnostic("E0306", f"'{d.name.name}' is declared twice", d.name.span,
                                          (Note("first declared here", first.name.span),)))
            continue
        scope[d.name.name] = d
    if len(module.trains) > 1 and module is program.root:
        seen: dict[str, ast.Train] = {}
        for t in module.trains:
            tname = t.model.name if t.model else ""
            if tname in seen:
                diagnostics.append(Diagnostic("E0306", "a second train section for the same model", t.span,
                                              (Note("the first is here", seen[tname].span),)))
            seen[tname] = t
    program.scopes[path] = scope
    if diagnostics:
        raise DlnError(diagnostics)


def _check_signatures(module: ast.Module) -> list[Diagnostic]:
    """Each hyperparameter of a model and each argument of a block is declared once."""
    out = []
    for decl, params, what in [(m, m.hparams, "hyperparameter") for m in module.models] + \
                              [(b, b.params, "argument") for b in module.blocks]:
        first: dict[str, ast.HParam] = {}
        for p in params:
            if p.name.name in first:
                out.append(Diagnostic("E0306", f"{what} '{p.name.name}' of {decl.name.name} is declared twice",
                                      p.name.span, (Note("first declared here", first[p.name.name].name.span),)))
            else:
                first[p.name.name] = p
    return out


# ---- hyperparameters ------------------------------------------------------------------------------------

HPARAM_TYPES = ("int", "float", "bool", "str")


def coerce_hparam(type_name: str, value: Any, from_text: bool) -> Any:
    """`value` as a hyperparameter of type `type_name`, or raise ValueError saying why not
    (in the language's words: `expected an int, got "abc"`, `got a bool (true)`)."""
    if from_text and isinstance(value, str):
        text = value.strip()
        parse_text = {"int": int, "float": float, "bool": _parse_bool}.get(type_name)
        if parse_text is None:
            return value
        try:
            value = parse_text(text)
        except ValueError:
            raise ValueError(f"expected {_article(type_name)}, got \"{text}\"") from None
    if type_name == "int" and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > INT_LIMIT:  # as for literals: sizes and indices are 64-bit
            raise ValueError(f"{str(value)[:12]}... ({len(str(abs(value)))} digits) is beyond a 64-bit int")
        return value
    if type_name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "str" and isinstance(value, str):
        return value
    got = describe(value)
    if got == "nothing":  # a Python object from the API: dln.compile(..., hidden=torch.tensor(8))
        got = "None" if value is None else f"a Python {type(value).__name__}"
    raise ValueError(f"expected {_article(type_name)}, got {got}")


def _parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(text)
    return text == "true"


def _article(type_name: str) -> str:
    return {"int": "an int", "bool": "true or false"}.get(type_name, f"a {type_name}")


def check_overrides(model: ast.Model, overrides: Mapping[str, Any], spans: Mapping[str, Span] | None = None,
                    span: Span | None = None) -> None:
    """Every override names a hyperparameter; an unknown one is reported where it is written
    (`spans`, by name), else at `span` (the call), else at the model."""
    known = [h.name.name for h in model.hparams]
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"{model.name.name} has {', '.join(known)}" if known else f"{model.name.name} has no hyperparameters")
            where = (spans or {}).get(key) or span or model.name.span
            raise DlnError(Diagnostic("E0402", f"unknown hyperparameter '{key}' for model {model.name.name}", where,
                                      (Note(hint),)))
