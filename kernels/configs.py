"""Choosing block sizes and warps: a cost model that needs no GPU.

For a GPU the choice follows the problem size: tiles big enough to keep a
streaming multiprocessor busy and memory accesses wide, small enough to keep
every value in registers (the tests compile each kernel for sm_80 and sm_90
and require zero spill bytes).  `autotune_candidates` lists what
`triton.autotune` should try on a real GPU.

Under Triton's interpreter every program instance costs about a millisecond
of Python, so there the blocks are as large as the data (capped), chosen at
launch time from the actual sizes (`interpreter_config`, copied into the
generated module).

Matrix products and convolutions run on the tensor cores when their operands
are bf16/f16 or the precision lets fp32 operands round (tf32, tf32x3,
bf16x3): their tiles are then tensor-core sized and software pipelined
(`_tensor_core_tiles`).  Their tiles follow the batch: `size_ranges` lists the
configuration per range of sizes, and the generated launcher picks the row
that holds at launch (`SIZED_CONFIG`).
"""

from __future__ import annotations

from typing import Mapping

from dln.compiler.fusion.cost import REPRESENTATIVE
from dln.compiler.ir import DType
from dln.compiler.symbolic import Dim, evaluate


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _size(d: Dim, batch: int = REPRESENTATIVE) -> int:
    """A size with every symbol (the batch, a sequence length) at `batch`."""
    if isinstance(d, int):
        return d
    return int(evaluate(d, {s: batch for s in d.symbols}))


def tensor_cores(precision: str, dtype: DType) -> bool:
    """Whether `tl.dot` on operands of `dtype` runs on the tensor cores: half operands always; fp32
    ones unless the products must be exact ("ieee"); f64 never (no Triton dot uses DMMA)."""
    return dtype in (DType.BF16, DType.F16) or (dtype is DType.F32 and precision != "ieee")


def gpu_config(kind: str, sizes: Mapping[str, Dim], epilogue_weight: int = 0, *, precision: str = "ieee",
               dtype: DType = DType.F32, random_draws: int = 0, batch: int = REPRESENTATIVE) -> dict[str, int]:
    """`epilogue_weight`: how many values per output element a matmul's epilogue keeps live
    (see `epilogue_weight`); heavier epilogues get smaller tiles.  `precision` and `dtype` (a contraction's
    operand type) say whether products run on the tensor cores; `random_draws`: random numbers its
    epilogue draws (counted in the weight too); `batch`: the value of every symbolic size (`size_ranges`
    asks for several)."""
    if kind in ("matmul", "convolution") and tensor_cores(precision, dtype):
        # A reduction over the batch (a weight gradient) takes full K slices at any batch: one range fewer
        # to build, and at a small batch such a product is launch-bound, not slice-bound.
        k = sizes["K"] if isinstance(sizes["K"], int) else None
        tiles = _tensor_core_tiles(_size(sizes["M"], batch), _size(sizes["N"], batch), k, epilogue_weight,
                                   random_draws, dtype)
        if kind == "convolution":
            # Measured with ptxas: a transposed convolution's 128 x 16 tile (its addresses and window masks
            # computed per element, live across the pipeline) spills 16 B on sm_80 at 4 stages of 32-deep
            # fp32 slices, none at 3; with bf16 operands 16 B at 3 stages of 64-deep slices, none at 32.
            tiles["num_stages"] = min(3, tiles["num_stages"])
            tiles["BLOCK_K"] = min(32, tiles["BLOCK_K"])
        return tiles
    if kind in ("pointwise", "multi_tensor", "scatter"):
        n = _size(sizes["n"])
        block = min(1024, max(128, next_pow2(n)))
        return {"BLOCK": block, "num_warps": 4 if block <= 1024 else 8}
    if kind == "reduction":
        rows, cols = _size(sizes["rows"]), _size(sizes["cols"])
        symbolic_cols = not isinstance(sizes["cols"], int)
        block_n = 128 if symbolic_cols else min(1024, max(16, next_pow2(cols)))
        # Measured with ptxas, compiled as the JIT compiles it (16-byte aligned operands, vector loads):
        # bias gradients with Adam's update over 16·B columns spill 16-24 B as 32 x 128 tiles on 8 warps
        # (sm_80) and as 16 x 128 on 4 (sm_90), an f16 loss over 64 x 16 rows 12 B on 4 warps (sm_80);
        # each none on 8 warps at up to 2048 elements.
        block_m = max(1, min(next_pow2(rows), 2048 // block_n, 64))
        warps = 8 if block_m * block_n >= 1024 else 4
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps}
    if kind == "matmul":
        m, n = _size(sizes["M"], batch), _size(sizes["N"], batch)
        # fp32 tiles: the accumulator plus the epilogue's live values sit in registers.  Measured
        # with ptxas: 64 x 64 x 32 needs 8 warps to stay under 255 registers on sm_80 (4 spill);
        # heavier epilogues get smaller tiles.
        if epilogue_weight <= 12:
            edge_m, edge_n, warps = 64, 64, 8
        elif epilogue_weight <= 24:
            edge_m, edge_n, warps = 32, 64, 4
        else:
            edge_m, edge_n, warps = 32, 32, 4
        block_m = max(16, min(edge_m, next_pow2(m)))
        block_n = max(16, min(edge_n, next_pow2(n)))
        if block_m * block_n <= 32 * 64:
            warps = 4
        # A K block wider than K itself only pads the dot (and, measured, makes ptxas spill).  The 64 x 64
        # tile on 8 warps takes K 16 at a time: ptxas holds it to 80 registers, and at K 32 it spilled 16
        # bytes on sm_80 (rnn_digits' input projection of the second layer, [8B, 64] @ [64, 64]).
        block_k = max(16, min(16 if block_m * block_n >= 64 * 64 and warps == 8 else 32,
                              next_pow2(_size(sizes["K"], batch))))
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps}
    if kind == "convolution":
        return _convolution_config(sizes, epilogue_weight, batch)
    if kind == "scan":
        return scan_config(sizes)
    if kind in ("scan_steps", "attention_vjp"):
        return {}   # a host function: its inner kernels have their own
    if kind in ("attention", "attention_dq", "attention_dkdv"):
        return attention_config(kind, sizes)
    if kind in ("layernorm", "layernorm_vjp"):
        return layernorm_config(sizes)
    if kind == "layernorm_sum":
        return {"BLOCK_P": 16, "BLOCK_N": max(16, min(128, next_pow2(_size(sizes["N"])))), "num_warps": 4}
    raise ValueError(kind)


def layernorm_config(sizes: Mapping[str, Dim]) -> dict[str, int]:
    """Layer norm's row tiles: whole rows (N padded to a power of two) in registers, BLOCK_M of them, about
    16 values of each live tile per thread (the backward keeps x, dy, xhat, g and dx), up to 16 warps for
    the widest rows (8192 features: one row a program)."""
    width = next_pow2(_size(sizes["N"]))
    block_m = max(1, min(next_pow2(_size(sizes["rows"])), 4096 // width))
    return {"BLOCK_M": block_m, "num_warps": min(16, max(4, block_m * width // 512))}


def scan_config(sizes: Mapping[str, Dim]) -> dict[str, int]:
    """A persistent recurrent kernel: BLOCK_B batch rows per program, the carries and one step's gate
    blocks [BLOCK_B, H] in registers, products in BLOCK_K-deep chunks.  Measured with ptxas for an LSTM
    with H = 128 (four [16, 128] gate blocks): 16 rows, 16-deep chunks and 8 warps compile without
    spills on sm_80 (fp32 FMA and tf32 HMMA alike); 4 warps or 32-deep chunks spill.  16 rows (`tl.dot`'s
    minimum) also keep the most programs busy for small batches."""
    h = _size(sizes["H"])
    warps = 8 if h >= 64 else 4
    # num_stages 1: the loop carries its state, so pipelining the weight loads across steps only
    # multiplies their shared-memory buffers (measured: 520 KiB at the default depth for H = 128).
    return {"BLOCK_B": 16, "BLOCK_K": 16, "num_warps": warps, "num_stages": 1}


def attention_config(kind: str, sizes: Mapping[str, Dim]) -> dict[str, int]:
    """Flash attention's tiles: BLOCK_M queries by BLOCK_N keys, the head (E, Ev padded to a power of two)
    whole in registers beside the scores tile and one or two accumulators."""
    head = next_pow2(max(_size(sizes["E"]), _size(sizes["Ev"]), 16))
    # Measured with ptxas (exact fp32 products, FMA; tf32 needs fewer registers).  Heads of 32: the
    # forward's 64 x 64 tile spills 600 B at 4 warps and none at 8; the backward's (two accumulators, P
    # and dP) still spills at 64 x 64 on 8 warps and at 64 x 32 on 4, and fits at 32 x 32 on 4 (150
    # registers).  Heads of 64 and 128: 32 x 32 on 4 warps spills up to 3 KiB (dK/dV), on 8 none for the
    # forward and dQ.  dK/dV keeps dk and dv [BLOCK_N, head] in registers too: 32 queries x 16 keys spill
    # 12-16 B on sm_80 at either warp count for some of (head 64, 128) x (fp32, tf32) x (masked or not);
    # 4 warps with a two-stage pipeline (fewer load buffers in flight) spill in none of them.
    if head <= 32:
        block_m, block_n, warps = (64, 64, 8) if kind == "attention" else (32, 32, 4)
    elif kind == "attention_dkdv":
        return {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}
    else:
        block_m, block_n, warps = 32, 32, 8
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps}


def _convolution_config(sizes: Mapping[str, Dim], epilogue_weight: int, batch: int) -> dict[str, int]:
    """An implicit GEMM's tiles: as a matmul's, but its operand addresses are computed per element
    of the tile (the im2col split of k into channel and taps, the window's masks), which keeps a
    [BLOCK_M, BLOCK_K] and a [BLOCK_K, BLOCK_N] tile of integers live beside the accumulator."""
    m, n, k = (_size(sizes[d], batch) for d in ("M", "N", "K"))
    # Rows stay 64 wide where there are as many (Hopper's wgmma, HGMMA, takes 64-row tiles); a heavy
    # epilogue (an optimizer update beside a weight gradient) narrows the columns: measured without
    # spills at 64 x 32, 4 warps, with Adam's update fused.
    block_m = max(16, min(64, next_pow2(m)))
    block_n = max(16, min(64 if epilogue_weight <= 12 else 32, next_pow2(n)))
    # Measured with ptxas: a 64 x 64 x 32 tile at 4 warps reaches 255 registers on sm_80 and spills
    # (exact fp32 products, FMA); 8 warps halve each thread's share.
    warps = 8 if block_m * block_n > 32 * 64 else 4
    # Measured with ptxas: a K loop of a single iteration with BLOCK_K = 32 (K = 27: three channels
    # of 3 x 3 taps) spills hundreds of bytes at any warp count, BLOCK_K = 16 none.  Compiled as the JIT
    # compiles it (16-byte aligned operands, vector loads), a 64 x 32 x 32 tile on 4 warps spills 8 B on
    # sm_80 (the decoders' convolutions, K = 256), 64 x 32 x 16 none: only 8 warps take K 32 deep.
    block_k = 32 if k >= 64 and warps == 8 else 16
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps}


# Shared memory a pipelined contraction may take per block: sm_80's opt-in maximum (163 KiB; sm_90 has
# 227 KiB), less room for the epilogue's layout conversions.
PIPELINE_SHARED = 128 * 1024


def _tensor_core_tiles(m: int, n: int, k: int | None, epilogue_weight: int, random_draws: int,
                       dtype: DType) -> dict[str, int]:
    """Tiles for `tl.dot` on the tensor cores.  BLOCK_M is 64 or 128 rows: Hopper's wgmma (HGMMA) is issued
    by a warp group of 4 warps over 64-row slices, so one warp group per 64 rows; below 64 rows Triton
    falls back to mma.sync (HMMA).  The K loop is pipelined as deep as PIPELINE_SHARED allows (3-4
    stages).  `k`: None when the reduction's length is symbolic (a weight gradient's batch)."""
    # Measured with ptxas, compiled as the JIT compiles it, for every product and convolution of the
    # examples (tests/kernels/test_aot_tensor_cores.py, 916 builds): 128 x 128 on 8 warps fits epilogues up
    # to a weight of 24 and most of Adam's updates beside a weight gradient (weights 37-45, up to 250
    # registers), but not all: 80-252 B spilled for some on sm_80 (bf16) or sm_90 (fp32), 176 B for a GELU
    # gradient (weight 25), 2.2 KiB for the tied embedding's update (65).  Heavier epilogues therefore take
    # 64 columns (32 for the heaviest), halving the accumulator's registers.  128 x 256 on 8 warps spills on
    # sm_90 even with no epilogue (16 B; 4.8 KiB with Adam's update), so tiles stop at 128 x 128.  Dropout
    # in the epilogue (Philox's lanes live beside the accumulator) spills 512 B on sm_80 and 784 B on sm_90
    # at 128 x 128, none at 128 x 64 (160 registers).
    block_m = 128 if m > 64 else 64
    widest = 32 if epilogue_weight > 48 else 64 if random_draws or epilogue_weight > 24 else 128
    if dtype in (DType.BF16, DType.F16):
        # Measured with ptxas: with bf16 operands (64-deep K slices) a plain 128 x 128 product of the
        # transformer's attention gradient settles at 128 registers on sm_80 and spills 16 B at 2, 3 or 4
        # stages (8 B with 32-deep slices); 128 x 64 takes 108 registers and spills none.
        widest = min(widest, 64)
    block_n = max(16, min(widest, next_pow2(n)))
    if m <= 64:
        # A small batch: the product streams the weights and is memory-bound; narrower column tiles
        # spread it over twice the programs.  64 x 128 on 4 warps also spills Adam's update (44 B on sm_80).
        block_n = min(block_n, 64)
    warps = 8 if block_m == 128 else 4
    element = 2 if dtype in (DType.BF16, DType.F16) else 4
    # K slices of 128 bytes a row (64 bf16 or 32 fp32 values: one 128-byte swizzled shared-memory row).
    full_k = 64 if element == 2 else 32
    block_k = full_k if k is None else max(16, min(full_k, next_pow2(k)))
    stage = (block_m + block_n) * block_k * element
    stages = max(2, min(4, PIPELINE_SHARED // stage))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}


# The batches at which `size_ranges` evaluates a contraction's configuration (every symbol at the value).
BATCH_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def size_ranges(kind: str, sizes: Mapping[str, Dim], epilogue_weight: int = 0, *, precision: str = "ieee",
                dtype: DType = DType.F32, random_draws: int = 0) -> list[tuple[dict[str, int], dict[str, int]]]:
    """A contraction's configuration per range of its symbolic sizes: rows `(limits, config)` in order,
    `limits` the largest value of each symbolic size of M, N, K the row serves (the last row: none, any
    size).  Empty when the configuration is the same at every batch (or the sizes are all known)."""
    if kind not in ("matmul", "convolution"):
        return []
    symbolic = [d for d in ("M", "N", "K") if not isinstance(sizes[d], int)]
    rows: list[tuple[dict[str, int], dict[str, int]]] = []
    for batch in BATCH_LADDER:
        config = gpu_config(kind, sizes, epilogue_weight, precision=precision, dtype=dtype,
                            random_draws=random_draws, batch=batch)
        limits = {d: _size(sizes[d], batch) for d in symbolic}
        if rows and rows[-1][1] == config:
            rows[-1] = (limits, config)   # the range grows
        else:
            rows.append((limits, config))
    if len(rows) <= 1:
        return []
    rows[-1] = ({}, rows[-1][1])
    return rows


# A random draw keeps Philox's four 32-bit lanes and its key live through ten rounds.
RANDOM_WEIGHT = 12


def epilogue_weight(computed_ops: int, random_draws: int, stores: int) -> int:
    return computed_ops + RANDOM_WEIGHT * random_draws + 2 * stores


def autotune_candidates(kind: str) -> list[dict[str, int]]:
    """What a GPU should try (`triton.autotune`); the cost model's pick comes first."""
    if kind in ("pointwise", "multi_tensor", "scatter"):
        return [{"BLOCK": b, "num_warps": w} for b, w in ((1024, 4), (512, 4), (2048, 8), (4096, 8))]
    if kind == "reduction":
        return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w}
                for m, n, w in ((1, 1024, 4), (4, 256, 4), (16, 128, 4), (64, 16, 4), (8, 512, 8))]
    if kind in ("layernorm", "layernorm_vjp"):   # the row width is fixed in the kernel
        return [{"BLOCK_M": m, "num_warps": w} for m, w in ((1, 4), (4, 4), (8, 8), (16, 8), (32, 8))]
    if kind == "layernorm_sum":
        return [{"BLOCK_P": p, "BLOCK_N": n, "num_warps": 4} for p, n in ((16, 128), (32, 64), (8, 256))]
    if kind == "scan":
        return [{"BLOCK_B": b, "BLOCK_K": k, "num_warps": w, "num_stages": 1}
                for b, k, w in ((16, 16, 8), (16, 16, 4), (32, 16, 8), (16, 32, 8), (64, 16, 8))]
    if kind.startswith("attention"):
        return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w}
                for m, n, w in ((32, 32, 4), (32, 32, 8), (64, 64, 8), (64, 32, 4), (128, 64, 8))]
    return [{"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "num_warps": w}
            for m, n, k, w in ((64, 64, 32, 4), (128, 64, 32, 4), (64, 128, 32, 4), (32, 32, 32, 4),
                               (128, 128, 32, 8))]


INTERPRETER_CONFIG = '''
def _interpreter_config(kind, sizes):
    """Blocks as large as the data (capped): the interpreter pays per program instance."""
    def p2(n, cap):
        return min(cap, 1 << max(0, (int(n) - 1).bit_length()))
    if kind in ("pointwise", "multi_tensor", "scatter"):
        return {"BLOCK": p2(sizes["n"], 1 << 16)}
    if kind == "reduction":
        block_n = max(2, p2(sizes["cols"], 1 << 12))
        return {"BLOCK_M": max(1, p2(sizes["rows"], max(1, (1 << 14) // block_n))), "BLOCK_N": block_n}
    if kind == "scan":
        return {"BLOCK_B": max(16, p2(sizes["B"], 64)), "BLOCK_K": 16}
    if kind in ("layernorm", "layernorm_vjp"):
        return {"BLOCK_M": p2(sizes["rows"], max(1, (1 << 14) // p2(sizes["N"], 1 << 14)))}
    if kind == "layernorm_sum":
        return {"BLOCK_P": 16, "BLOCK_N": max(16, p2(sizes["N"], 1 << 12))}
    if kind.startswith("attention"):
        return {"BLOCK_M": max(16, p2(sizes["Tq"], 64)), "BLOCK_N": max(16, p2(sizes["Tk"], 64))}
    return {"BLOCK_M": max(16, p2(sizes["M"], 128)), "BLOCK_N": max(16, p2(sizes["N"], 128)),
            "BLOCK_K": max(16, p2(sizes["K"], 128))}
'''

SIZED_CONFIG = '''
def _sized_config(name, sizes):
    """The cost model's configuration for the sizes of this launch: the first row of SIZE_RANGES whose
    limits all hold, else CONFIGS (a kernel whose tiles are the same at any batch)."""
    for limits, config in SIZE_RANGES.get(name, ()):
        if all(sizes[d] <= limit for d, limit in limits.items()):
            return config
    return CONFIGS[name]
'''
