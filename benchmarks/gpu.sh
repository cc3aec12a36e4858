#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, one command:   benchmarks/gpu.sh
# Sets up .venv, runs the kernel test suite compiled for the GPU (not Triton's interpreter), then
# times the reference models' training steps (benchmarks/gpu_step.py: dln with and without CUDA
# graphs, PyTorch eager, torch.compile) and writes benchmarks/RESULTS-gpu.md.
# Without a GPU it stops at once and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "benchmarks/gpu.sh: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing run," \
         "benchmarks/RESULTS-gpu.md left as it is" >&2
    exit 2
fi
.ci/setup
.venv/bin/python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"benchmarks/gpu.sh: torch {torch.__version__} in .venv sees no CUDA GPU (a CPU-only build? "
             "install a CUDA build of torch into .venv); nothing measured")
print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
export TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1 DLN_TEST_DEVICE=cuda
.venv/bin/python -m pytest tests/kernels -q -p no:cacheprovider
.venv/bin/python benchmarks/gpu_step.py --record
