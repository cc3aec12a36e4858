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
