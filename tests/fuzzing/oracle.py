"""The oracle: what `dln --debug check FILE` does to one case, and what came of it.

`check_file` loads the file and runs the CLI's own `check_program` (every
model's forward graph, every train section's training step, with the IR
verified between passes), then plans and writes the Triton kernels of every
graph it built (as text: nothing is compiled), since internal errors hide
there too.  The outcome is one of

* `ok`          the program checks;
* `diagnostic`  a `DlnError` whose every diagnostic points into a file;
* `unlocated`   a `DlnError` with a diagnostic that has no place (or a place
                outside its file), other than those of `UNLOCATED_OK`;
* `internal`    any other exception (the CLI prints "internal error");
* `hang`        the case ran past its time limit.

The last three are failures.  Run as a module (`python -m fuzzing.oracle`) this
is a worker: one JSON case a line on stdin, one JSON outcome a line on stdout,
each case under `signal.alarm` (the parent kills a worker that does not answer).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

FAILURES = ("unlocated", "internal", "hang")

# Diagnostics that may have no place in a file, and why.
UNLOCATED_OK = {
    # The file itself cannot be read (missing, not UTF-8): there is no text to point into.
    "E0702": None,
    # A file without a single declaration: there is nothing in it to point at.
    "E0301": "declares no model",
}


@dataclass
class Outcome:
    kind: str               # ok | diagnostic | unlocated | internal | hang
    detail: str = ""        # the codes, the unlocated diagnostic, or the exception and where it was raised
    signature: str = ""     # what makes two failures the same bug: exception type and innermost dln frame
    seconds: float = 0.0


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in the compiler keeps it."""


def _located(d) -> bool:
    s = d.span
    if s is None:
        return False
    lines = s.source.text.count("\n") + 1
    return 1 <= s.line <= lines and s.col >= 1 and (s.end_line, s.end_col) >= (s.line, s.col)


def _allowed_unlocated(d) -> bool:
    if d.code not in UNLOCATED_OK:
        return False
    words = UNLOCATED_OK[d.code]
    return words is None or words in d.message


def _where(tb) -> str:
    """The innermost frame in dln's own code (else the innermost frame)."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/site-packages/" not in f.filename and "fuzzing" not in f.filename]
    f = (ours or frames)[-1] if frames else None
    if f is None:
        return "?"
    parts = Path(f.filename).parts
    short = "/".join(parts[-2:])
    return f"{short}:{f.lineno} in {f.name}"


def check_file(path: str) -> Outcome:
    from dln.compiler import pipeline
    from dln.dsl.diagnostics import DlnError, render
    from dln.kernels.module import generate_module
    from dln.runtime.cli import check_program

    try:
        program = pipeline.load(path)
        _, graphs = check_program(program, debug=True)
        for graph, donate in graphs:
            generate_module(graph, donate)
        return Outcome("ok")
    except DlnError as e:
        bad = [d for d in e.diagnostics if not _located(d) and not _allowed_unlocated(d)]
        if bad or not e.diagnostics:
            shown = render(bad[0]) if bad else "a DlnError without diagnostics"
            return Outcome("unlocated", shown, f"unlocated {bad[0].code if bad else ''}: "
                           f"{bad[0].message[:60] if bad else ''}")
        return Outcome("diagnostic", " ".join(sorted({d.code for d in e.diagnostics})))
    except _Hang:
        return Outcome("hang", "ran past the time limit at " + _where(sys.exc_info()[2]),
                       "hang at " + _where(sys.exc_info()[2]))
    except BaseException as e:  # noqa: BLE001 - every other exception is what we look for
        if isinstance(e, KeyboardInterrupt):
            raise
        where = _where(e.__traceback__)
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-12:])
        return Outcome("internal", f"{type(e).__name__}: {str(e)[:300]}\n{text}", f"{type(e).__name__} at {where}")


# ---- the worker ------------------------------------------------------------------------------------------------

def _alarm(signum, frame):
    raise _Hang()


def main() -> None:
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    memory = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    protocol = os.fdopen(os.dup(1), "w")
    sys.stdout = open(os.devnull, "w")  # the compiler's prints must not reach the protocol
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.signal(signal.SIGALRM, _alarm)
    # Imports and the parser's tables before the first case, so they do not count against it.
    import dln.kernels.module  # noqa: F401
    import dln.runtime.cli  # noqa: F401
    from dln.dsl.parser import parse
    parse("")
    path = Path("case.dln").resolve()
    print(json.dumps({"ready": True}), file=protocol, flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        path.write_bytes(case["text"].encode("utf-8", "surrogateescape"))
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            outcome = check_file(path.name)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcome.seconds = time.perf_counter() - began
        print(json.dumps({"id": case["id"], **asdict(outcome)}), file=protocol, flush=True)


if __name__ == "__main__":
    main()
