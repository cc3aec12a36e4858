"""Is a fusion worth it?  The cost model, apart from legality (legality.py).

Costs are in bytes of memory traffic, the resource a training step is bound
by on a GPU; a kernel launch is priced as the bytes that could have moved in
its time.  The numbers are assumptions about a current datacenter GPU, named
here so that nothing else in the planner hides a threshold.
"""

from __future__ import annotations

# Symbolic sizes (batch, sequence) are priced at this value.
REPRESENTATIVE = 128

# Launching a kernel costs a few microseconds: at ~2 TB/s that is ~8 MB, but
# small kernels overlap their launches; count a conservative 64 KiB.
LAUNCH_BYTES = 64 * 1024

# A value computed inline rather than stored costs its operations again in every
# kernel that uses it.  Up to this many inline operations per use, recomputing
# beats a round trip through memory (a few bytes of traffic each).
RECOMPUTE_OPS = 24


# A reduction kernel runs one program per block of rows.  Elementwise work over the full
# domain joins it only when that leaves enough programs to fill a GPU, or the work is small.
MIN_ROWS_FOR_FULL_WORK = 64
SMALL_WORK = 16 * 1024


def join_profit(shared_bytes: int, rows: int | None = None, full_elements: int = 0) -> int:
    """The bytes saved by putting a node into a kernel that already reads `shared_bytes` of
    what the node reads (or computes what it reads), plus the launch it saves.  Zero when
    the node would do `full_elements` of work in a reduction kernel of only `rows` rows."""
    if rows is not None and rows < MIN_ROWS_FOR_FULL_WORK and full_elements > SMALL_WORK:
        return 0
    return shared_bytes + LAUNCH_BYTES


def should_store_shared(inline_ops: int, uses: int) -> bool:
    """Store a value used by several kernels rather than recomputing it in each?"""
    return uses > 1 and inline_ops * (uses - 1) > RECOMPUTE_OPS


# ---- filling the GPU (a target's machine: target.py) ----------------------------------------------------------

# A split of a product's K, or of a reduction's columns, takes at least this many of them: below, the
# partial sums cost more traffic than the programs they add are worth.
MIN_SPLIT = 64
MAX_SPLITS = 512   # as layer norm's backward (kernels/layernorm.py PARTIALS): four partial results per SM of an H100


def fuse_update(programs_fused: int, machine) -> bool:
    """Fuse an optimizer update into a weight gradient's epilogue?  Only where the product's grid, tiled
    for the heavier epilogue, still gives every SM a program; otherwise the gradient is stored and the
    update joins the multi-tensor kernel, and the product may split its K."""
    return programs_fused >= machine.sms


def best_split(machine, programs: int, length: int, stage1, stage2) -> int:
    """The number of splits S (1: none) of a `length`-long sum over a grid of `programs` programs:
    `stage1(S)` and `stage2(S)` give (programs, FLOPs, bytes, unit, warps) of the split kernel and of the
    kernel combining its S partial results (`target.kernel_time`).  No split when the grid already fills
    the GPU.  Otherwise the S of least modeled time (both stages, launches included), except that a
    grid that gives every SM a program is preferred while it costs at most FILL_SLACK more: the model
    does not see the latency an idle SM's share of the work adds."""
    from dln.compiler.fusion.target import kernel_time

    if programs >= machine.sms:
        return 1
    times = {}
    for s in range(1, max(1, min(MAX_SPLITS, length // MIN_SPLIT)) + 1):
        times[s] = kernel_time(machine, *stage1(s)).time_s + (kernel_time(machine, *stage2(s)).time_s if s > 1 else 0)
    best = min(times, key=lambda s: (times[s], s))
    filling = [s for s in times if stage1(s)[0] >= machine.sms and times[s] <= FILL_SLACK * times[best]]
    return min(filling, key=lambda s: (times[s], s)) if filling and stage1(best)[0] < machine.sms else best


# How much more modeled time a split may cost to give every SM a program.
FILL_SLACK = 1.25
