"""Run every benchmark and record the numbers in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import check_time  # noqa: E402
import compile_latency  # noqa: E402
import fusion  # noqa: E402
import numpy_step  # noqa: E402


def main() -> None:
    import numpy
    import torch

    step = numpy_step.measure_all(15, 20)
    counts = fusion.main()
    check = check_time.main([])
    latency = compile_latency.measure(15)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
               f"{platform.python_version()}, NumPy {numpy.__version__}, torch {torch.__version__}")
    d, e, c = counts["dln"], counts["eager"], counts["torch_compile"]
    text = f"""# Benchmark results

Recorded {datetime.date.today().isoformat()} on {machine}.
Regenerate with `.venv/bin/python benchmarks/run_all.py`.

{numpy_step.section(step)}
## Kernels per training step and modeled memory traffic (issue: <= torch.compile's count, <= 0.5x eager's bytes)

Same model and batch (`benchmarks/fusion.py`).

| | kernels per step | modeled HBM bytes |
| --- | --- | --- |
| dln (forward + backward + Adam) | **{d['kernels']}** | **{d['bytes']:,}** |
| PyTorch eager (operators, Adam foreach) | {e['ops']} ({e['phases']['forward']['ops']} + {e['phases']['backward']['ops']} + {e['phases']['optimizer']['ops']}) | {e['bytes']:,} |
| torch.compile, forward + backward only | {c['forward_backward_kernels']} ({' + '.join(map(str, c['per_graph']))}) | - |
| torch.compile, its compiled Adam step | {c['optimizer_kernels']} | - |

dln / eager bytes: **{d['bytes'] / e['bytes']:.3f}**. dln peak activation memory: {d['peak_activation_bytes']:,} bytes.
dln's kernels: {', '.join(d['names'])}.

## `dln check` (issue: < 0.5 s)

`dln check examples/mlp_digits.dln` in a fresh process: median **{check['median_ms']} ms** over {check['runs']} runs
(min {check['min_ms']} ms) (`benchmarks/check_time.py`).

""" + compile_latency.section(latency)
    # Sections this script does not measure are kept as they were, in their order: the fuzzing campaign
    # and the differential harness are too long to run here (benchmarks/fuzz.py --record, differential.py),
    # LeNet's, the LSTM's and the GPT block's figures need a quiet machine (lenet.py --record, ...).
    results = HERE / "RESULTS.md"
    kept = results.read_text() if results.exists() else ""
    written = {m.group(1) for m in re.finditer(r"^## (.*)$", text, re.M)}
    for section in re.findall(r"^## .*?(?=^## |\Z)", kept, re.S | re.M):
        if section.splitlines()[0][3:] not in written:
            text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    results.write_text(text)
    (HERE / "results.json").write_text(json.dumps({"numpy_step": step, "fusion": counts, "check": check,
                                                   "compile_latency": latency},
                                                  indent=2, default=str) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
