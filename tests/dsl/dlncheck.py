"""Running `dln check` on many files quickly, exactly as the command does.

Starting `python -m dln` costs about half a second, almost all of it imports,
and the corpus of bad programs has over a hundred files.  `check_many` pays
the imports once: one helper process imports the CLI (and the modules a
check imports, and builds the parser's tables), then forks one child
per file; each child runs the CLI's `main(["check", FILE])` with its own
stdout and stderr and exits with the status `python -m dln` would (an
uncaught exception prints Python's traceback and exits 1, as the interpreter
does).  Where `os.fork` is missing, every file gets a real `python -m dln`.
A test compares both ways on a sample (test_bad_programs.py).

Expectations are comment lines at the top of a `.dln` file:

    # expect: E0203 7:14                 error code, line:col of the primary span
    # expect: E0502 imports/b.dln:2:1    ... in another file (relative to this one)
    # message: matching inner           text the diagnostic (message or notes) contains
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ROOT / "tests" / "programs"
BAD = PROGRAMS / "bad"
MULTI = PROGRAMS / "multi"
TIMEOUT = 120.0


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT) -> Result:
    """`python -m dln ARGS`, as a user runs it (the same as `run_dln` in tests/conftest.py)."""
    r = subprocess.run([sys.executable, "-m", "dln", *args], capture_output=True, text=True,
                       cwd=cwd or ROOT, timeout=timeout)
    return Result(r.returncode, r.stdout, r.stderr)


_DRIVER = r"""
import json, os, sys, time, traceback
from dln.runtime.cli import main

# What `dln check` imports on its way, and the parser's tables: paid once, before forking.
import dln, dln.compiler.pipeline, dln.compiler.cost, dln.runtime.train, dln.runtime.api  # noqa: E401
dln.dsl.parse("")

out_dir, jobs, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
paths = sys.argv[4:]
sys.stdout.flush()
sys.stderr.flush()


def child(i, path):
    code = 1
    try:
        for fd, ext in ((1, "out"), (2, "err")):
            f = os.open(os.path.join(out_dir, f"{i}.{ext}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["dln", "check", path]
        try:
            code = main(["check", path])
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


codes = [None] * len(paths)
pending = list(enumerate(paths))
running = {}
while pending or running:
    while pending and len(running) < jobs:
        i, path = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            child(i, path)
        running[pid] = (i, time.monotonic())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
        now = time.monotonic()
        for other, (i, began) in list(running.items()):
            if now - began > timeout:
                os.kill(other, 9)
        time.sleep(0.002)
        continue
    i, _ = running.pop(pid)
    codes[i] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


def check_many(paths: list[str], cwd: Path = ROOT) -> dict[str, Result]:
    """`dln check PATH` for every path (as given, relative to `cwd`), by path."""
    if not paths:
        return {}
    if not hasattr(os, "fork"):
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            return dict(zip(paths, pool.map(lambda p: run_cli("check", p, cwd=cwd), paths)))
    jobs = max(2, min(8, os.cpu_count() or 2))
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-c", _DRIVER, out, str(jobs), str(TIMEOUT), *paths],
                           capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT + 60 * len(paths) / jobs)
        if r.returncode != 0:
            raise RuntimeError(f"the check driver failed:\n{r.stderr}")
        codes = json.loads(r.stdout.strip().splitlines()[-1])
        results = {}
        for i, (path, code) in enumerate(zip(paths, codes)):
            text = {ext: Path(out, f"{i}.{ext}").read_text(errors="replace") for ext in ("out", "err")}
            results[path] = Result(code, text["out"], text["err"])
        return results


# ---- the corpus ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expectation:
    code: str
    path: str       # the file the primary span is in, as `dln` shows it (relative to ROOT)
    line: int
    col: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


_EXPECT = re.compile(r"# expect: (E\d{4}) (?:(\S+\.dln):)?(\d+):(\d+)\s*$")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def expectations(path: Path) -> tuple[list[Expectation], list[str]]:
    """The `# expect:` and `# message:` lines at the top of a corpus file."""
    expects: list[Expectation] = []
    messages: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:") and not line.startswith("# message:"):
            break
        if line.startswith("# message:"):
            messages.append(line[len("# message:"):].strip())
            continue
        m = _EXPECT.match(line)
        if m is None:
            raise ValueError(f"{rel(path)}: malformed expectation {line!r}")
        code, other, ln, col = m.groups()
        where = rel(path) if other is None else Path(os.path.normpath(path.parent / other)).relative_to(ROOT).as_posix()
        expects.append(Expectation(code, where, int(ln), int(col)))
    return expects, messages


def bad_programs() -> list[Path]:
    return sorted(BAD.glob("*.dln"))


def multi_programs() -> list[Path]:
    return sorted(MULTI.glob("*.dln"))


@functools.cache
def corpus_results() -> dict[str, Result]:
    """`dln check` of every corpus file, run once per test session."""
    return check_many([rel(p) for p in bad_programs() + multi_programs()])


# ---- reading diagnostics --------------------------------------------------------------------------------------

_HEAD = re.compile(r"^(error|warning)\[(E\d{4})\]: (.*)$", re.M)
_ARROW = re.compile(r"^\s*--> (.+):(\d+):(\d+)$")


@dataclass(frozen=True)
class Shown:
    code: str
    message: str
    where: str | None    # path:line:col of the primary span, None when it has none
    text: str            # the whole rendered diagnostic


def diagnostics(stderr: str) -> list[Shown]:
    """The diagnostics in the order printed."""
    heads = list(_HEAD.finditer(stderr))
    out = []
    for k, m in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(stderr)
        text = stderr[m.start():end]
        lines = text.splitlines()
        arrow = _ARROW.match(lines[1]) if len(lines) > 1 else None
        where = f"{arrow.group(1)}:{arrow.group(2)}:{arrow.group(3)}" if arrow else None
        out.append(Shown(m.group(2), m.group(3), where, text))
    return out


def has_caret(text: str) -> bool:
    return any(re.fullmatch(r"\s*\|\s*\^+\s*", line) for line in text.splitlines())
