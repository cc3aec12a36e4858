"""dln on the ONNX backend conformance suite (dln.runtime.onnx.conformance): pass counts per
collection, per op family of the node subset, with onnxruntime's counts on the same cases beside
them, and the expected failures with their reasons.

    .venv/bin/python benchmarks/onnx_conformance.py [--record]

With --record, writes the "ONNX conformance" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paired  # noqa: E402

from dln.runtime.onnx.conformance import EXPECTED_FAILURES, KINDS, cases, check  # noqa: E402


def onnxruntime_passes(case) -> bool:
    import onnxruntime as ort
    from onnx.backend.test.runner import Runner
    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        with np.errstate(all="ignore"):
            for inputs, expected in case.data:
                got = session.run(None, dict(zip(names, inputs)))
                Runner.assert_similar_outputs(list(expected), list(got), case.rtol, case.atol)
    except Exception:   # noqa: BLE001
        return False
    return True


def measure() -> dict:
    out = {}
    for kind in KINDS:
        start = time.perf_counter()
        rows = [(c.op, check(c) is None, onnxruntime_passes(c)) for c in cases(kind)]
        out[kind] = {"total": len(rows), "dln": sum(r[1] for r in rows), "onnxruntime": sum(r[2] for r in rows),
                     "seconds": round(time.perf_counter() - start, 1)}
        if kind == "node":
            by_op = collections.defaultdict(lambda: [0, 0, 0])
            for op, ours, theirs in rows:
                by_op[op][0] += 1
                by_op[op][1] += ours
                by_op[op][2] += theirs
            out[kind]["by_op"] = dict(sorted(by_op.items()))
    return out


def section(r: dict) -> str:
    lines = ["## ONNX conformance (issue: >= 925 of the node subset, every pytorch-converted and pytorch-operator "
             "case)", "",
             "`benchmarks/onnx_conformance.py`: onnx's backend test cases (`onnx.backend.test`, built in memory), "
             "run on dln's NumPy backend through `dln.runtime.onnx.backend` and compared as the suite compares "
             "(shape, element type, the case's rtol/atol).  The node subset is the cases of the training-relevant "
             "op types (`dln.runtime.onnx.conformance.SUBSET`) and their `_expanded` twins.  onnxruntime on the "
             "same cases, for scale.  `tests/onnx/test_conformance.py` enforces the counts.  (The issue's anchor "
             "counted 932 node cases in its subset, 765 passed by onnxruntime and 928 by onnx's reference "
             "evaluator, without recording the list; this subset is rebuilt from the op categories it names, "
             "`_expanded` twins included, and is larger.)", "",
             "| collection | cases | dln passes | onnxruntime passes |", "| --- | --- | --- | --- |"]
    for kind in KINDS:
        k = r[kind]
        lines.append(f"| {kind} | {k['total']} | **{k['dln']}** | {k['onnxruntime']} |")
    lines += ["", "Node subset by op type (cases, dln, onnxruntime): " + "; ".join(
        f"{op} {t}/{d}/{o}" for op, (t, d, o) in r["node"]["by_op"].items()) + ".", "",
        "The node cases dln fails, and why:", ""]
    lines += [f"- `{name}`: {why}" for name, why in sorted(EXPECTED_FAILURES.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    r = measure()
    for kind in KINDS:
        print(f"{kind}: dln {r[kind]['dln']}/{r[kind]['total']}, onnxruntime {r[kind]['onnxruntime']} "
              f"({r[kind]['seconds']} s)")
    if args.record:
        paired.record("ONNX conformance", section(r))
    return r


if __name__ == "__main__":
    main()
