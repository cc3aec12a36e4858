#!/usr/bin/env bash
# For the day a GPU is available: on a machine with an NVIDIA GPU, set up, run the
# kernel test suite compiled for the GPU (not Triton's interpreter), then the GPU
# benchmarks.  One command:   benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup
export TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1 DLN_TEST_DEVICE=cuda
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
.venv/bin/python -m pytest tests/kernels -q
.venv/bin/python benchmarks/gpu_step.py
