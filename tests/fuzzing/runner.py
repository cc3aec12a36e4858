"""Running cases on a pool of worker processes, each case under a time limit.

A worker (`python -m fuzzing.oracle`) pays the compiler's imports once and then
checks case after case in its own scratch directory (imports in a case resolve
there, never in the repository).  The worker times a case out itself; a worker
that does not answer within the limit plus a grace period (stuck outside
Python, or killed for memory) is killed and replaced, and its case counts as a
hang (or as an internal error when the worker died).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from fuzzing.cases import Case
from fuzzing.oracle import Outcome

TESTS = Path(__file__).resolve().parents[1]
GRACE = 5.0                  # seconds past the limit before a silent worker is killed
MEMORY = 4 << 30             # address space of a worker: a runaway allocation fails instead of swapping


@dataclass
class Result:
    case: Case
    outcome: Outcome

    @property
    def failed(self) -> bool:
        return self.outcome.kind in ("unlocated", "internal", "hang")


class _Worker:
    def __init__(self, limit: float, scratch: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="worker-", dir=scratch))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "fuzzing.oracle", str(limit), str(MEMORY)],
                                     cwd=self.dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.case: Case | None = None
        self.deadline = 0.0
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("a fuzzing worker failed to start (run `python -m fuzzing.oracle` in tests/)")

    def send(self, case: Case, limit: float) -> None:
        self.case = case
        self.deadline = time.monotonic() + limit + GRACE
        self.proc.stdin.write(json.dumps({"id": case.index, "text": case.text}) + "\n")
        self.proc.stdin.flush()

    def check(self, text: str, limit: float) -> Outcome | None:
        """One text, waiting for the answer; None when the worker had to be killed (it is then dead)."""
        self.proc.stdin.write(json.dumps({"id": 0, "text": text}) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(limit + GRACE) else ""
        sel.close()
        if not line:
            self.kill()
            return None
        reply = json.loads(line)
        return Outcome(reply["kind"], reply["detail"], reply["signature"], reply["seconds"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_cases(cases: Iterable[Case], jobs: int = 2, limit: float = 15.0) -> Iterator[Result]:
    """Check every case; results come in the order the cases finish."""
    todo = iter(cases)
    with tempfile.TemporaryDirectory(prefix="dln-fuzz-") as scratch:
        workers = [_Worker(limit, Path(scratch)) for _ in range(max(1, jobs))]
        sel = selectors.DefaultSelector()
        for w in workers:
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        exhausted = False
        try:
            while True:
                for w in workers:
                    if w.case is None and not exhausted:
                        case = next(todo, None)
                        if case is None:
                            exhausted = True
                        else:
                            w.send(case, limit)
                busy = [w for w in workers if w.case is not None]
                if not busy:
                    return
                now = time.monotonic()
                timeout = max(0.0, min(w.deadline for w in busy) - now)
                for key, _ in sel.select(timeout):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if line:
                        reply = json.loads(line)
                        outcome = Outcome(reply["kind"], reply["detail"], reply["signature"], reply["seconds"])
                        yield _result(w.case, outcome)
                        w.case = None
                    else:  # the worker died: the case crashed it
                        code = w.proc.wait()
                        yield _result(w.case, Outcome("internal", f"the worker died (exit status {code})",
                                                      f"worker died ({code})"))
                        workers[workers.index(w)] = _replace(w, sel, limit, Path(scratch))
                now = time.monotonic()
                for w in list(workers):
                    if w.case is not None and now > w.deadline:
                        yield _result(w.case, Outcome("hang", "the worker did not answer; killed",
                                                      "hang (killed)", now - w.deadline + limit + GRACE))
                        workers[workers.index(w)] = _replace(w, sel, limit, Path(scratch))
        finally:
            for w in workers:
                w.kill()


def _replace(w: _Worker, sel: selectors.BaseSelector, limit: float, scratch: Path) -> _Worker:
    sel.unregister(w.proc.stdout)
    w.kill()
    new = _Worker(limit, scratch)
    sel.register(new.proc.stdout, selectors.EVENT_READ, new)
    return new


def _result(case: Case, outcome: Outcome) -> Result:
    return Result(case, outcome)
