"""The GPUs the planner plans for, as data, and the time model it prices kernels with.

A kernel of P programs (thread blocks) on a GPU of S streaming multiprocessors
(SMs) is modeled as the roofline of its busiest SM, wave-quantized:

    per program   compute = FLOPs / P / (peak FLOP/s / S),  memory = bytes / P / (HBM bandwidth / S)
    time          = ceil(P / S) * max(compute, memory) + launch latency

Programs share their SM's throughput (those resident together run
concurrently; later ones wait), so a grid of fewer programs than SMs leaves
the rest idle: 4 programs on 132 SMs run at 4/132 of the machine, and 133
programs take two rounds where 132 take one.  Memory bandwidth is assumed to
divide evenly among SMs (a lone SM is modeled at 1/S of HBM's bandwidth, an
assumption on the pessimistic side of what one SM can draw).  Caches are
not modeled: every byte a kernel reads or writes crosses HBM once
(dln.compiler.cost.nbytes).

"Waves per SM" in reports is P / (S x programs resident per SM), where
residency is limited by warps and shared memory per SM.

This is a model, not a measurement; its numbers are the vendors' peak
figures below.  Nothing here knows Triton: the grid and launch configuration
of a kernel come from the backend (dln.kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class Machine:
    name: str
    arch: str                       # the compile target (`--target`)
    sms: int                        # streaming multiprocessors
    smem_per_sm: int                # bytes of shared memory an SM can give its resident blocks
    max_warps_per_sm: int
    max_blocks_per_sm: int
    hbm_bandwidth: float            # bytes / s
    peak_flops: Mapping[str, float] = field(default_factory=dict)   # FLOP/s by precision (dense)
    launch_latency: float = 0.0     # seconds between back-to-back launches of small kernels


# NVIDIA A100 SXM4 80 GB.  Sources: "NVIDIA A100 Tensor Core GPU Architecture" whitepaper (2020), table 1
# and the CUDA C Programming Guide's compute capability 8.0 table (108 SMs; 164 KB of shared memory per SM
# for blocks; 64 warps and 32 blocks resident per SM); the A100 datasheet (2021): 2,039 GB/s HBM2e, 19.5
# TFLOP/s FP32, 156 TFLOP/s TF32 and 312 TFLOP/s BF16/FP16 tensor cores (dense, without sparsity).
A100 = Machine(
    name="A100 SXM4 80GB", arch="sm_80", sms=108, smem_per_sm=164 * 1024, max_warps_per_sm=64,
    max_blocks_per_sm=32, hbm_bandwidth=2.039e12,
    peak_flops={"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    launch_latency=3e-6,
)

# NVIDIA H100 SXM5 80 GB.  Sources: "NVIDIA H100 Tensor Core GPU Architecture" whitepaper (2022) and the
# CUDA C Programming Guide's compute capability 9.0 table (132 SMs; 227 KB of shared memory per SM for
# blocks; 64 warps and 32 blocks resident per SM); the H100 datasheet (2023), SXM column: 3.35 TB/s HBM3,
# 67 TFLOP/s FP32, 494.7 TFLOP/s TF32 and 989.4 TFLOP/s BF16/FP16 tensor cores (dense: half the datasheet's
# sparsity figures).
H100 = Machine(
    name="H100 SXM5 80GB", arch="sm_90", sms=132, smem_per_sm=227 * 1024, max_warps_per_sm=64,
    max_blocks_per_sm=32, hbm_bandwidth=3.35e12,
    peak_flops={"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    launch_latency=3e-6,
)
# Launch latency: the gap between back-to-back small kernels launched from one host thread on one stream,
# without CUDA graphs, is a few microseconds on both (NVIDIA's Nsight guidance and common measurements give
# 2-5 us); 3 us is assumed.  It is what a CUDA graph would remove, and is reported apart.

MACHINES: dict[str, Machine] = {"a100": A100, "h100": H100}
BY_ARCH: dict[str, Machine] = {m.arch: m for m in MACHINES.values()}

# What a matrix product's `input_precision` (or its operands' type) runs on.
PRECISION_UNITS = {"ieee": "fp32", "tf32": "tf32", "tf32x3": "tf32", "bf16": "bf16", "f16": "fp16", "fp16": "fp16"}


# The backend's launch configuration of a kernel: (kind, sizes as the kernel is generated for, then its
# epilogue's operations, random draws and stored values) -> blocks and warps (dln.kernels.configs.gpu_config).
# The planner asks it how many programs a grid would have.
TileChooser = Callable[..., Mapping[str, int]]


@dataclass(frozen=True)
class Target:
    """What a plan is made for: a machine, the sizes of the symbolic dimensions (the batch), the backend's
    tile choice."""

    machine: Machine
    sizes: Mapping[str, int]
    tiles: TileChooser
    precision: str = "ieee"


@dataclass(frozen=True)
class KernelTime:
    programs: int
    resident: int           # programs one SM holds at once
    flops: int
    bytes: int
    compute_s: float        # wave-quantized
    memory_s: float         # wave-quantized
    launch_s: float
    sms: int

    @property
    def waves(self) -> float:
        """Programs per SM-full of resident programs (1.0: every SM holds as many as it can)."""
        return self.programs / (self.sms * self.resident)

    @property
    def fills(self) -> bool:
        """Does every SM get a program?"""
        return self.programs >= self.sms

    @property
    def run_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def time_s(self) -> float:
        return self.run_s + self.launch_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s > self.memory_s else "memory"


def resident_per_sm(machine: Machine, warps: int, smem: int = 0) -> int:
    """How many programs of `warps` warps using `smem` bytes of shared memory an SM holds at once."""
    by_warps = machine.max_warps_per_sm // max(1, warps)
    by_smem = machine.smem_per_sm // smem if smem else machine.max_blocks_per_sm
    return max(1, min(by_warps, by_smem, machine.max_blocks_per_sm))


def kernel_time(machine: Machine, programs: int, flops: int, nbytes: int, unit: str = "fp32",
                warps: int = 4, smem: int = 0, launches: int = 1) -> KernelTime:
    """The modeled time of one kernel (see the module docstring); `launches`: how many launches it takes."""
    programs = max(1, int(programs))
    rounds = math.ceil(programs / machine.sms)
    compute = rounds * (flops / programs) / (machine.peak_flops[unit] / machine.sms)
    memory = rounds * (nbytes / programs) / (machine.hbm_bandwidth / machine.sms)
    return KernelTime(programs, resident_per_sm(machine, warps, smem), int(flops), int(nbytes), compute, memory,
                      launches * machine.launch_latency, machine.sms)


def full_machine_time(machine: Machine, flops: int, nbytes: int, unit: str = "fp32") -> KernelTime:
    """A kernel that fills the GPU (a library matmul, a large elementwise pass): the plain roofline."""
    return kernel_time(machine, machine.sms, flops, nbytes, unit)
