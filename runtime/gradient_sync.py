"""The gradient exchange of data-parallel training: buckets, and one optimizer's step across ranks.

`GradientSync` runs the step compiled in two graphs (`pipeline.split_step`):
the gradient graph on this rank's rows, then — once the gradients are
summed across ranks — the update graph, the same on every rank
(dln.runtime.distributed states the contract with one process).  Between
them the gradients travel in flat buckets, as PyTorch's DDP lays them out:

- **Layout.** Each bucket is one flat buffer of the backend's (a NumPy
  array, a torch tensor), one element type, the gradients as views of it,
  in the order the backward makes them (`backward_order`), up to DDP's caps
  (1 MB the first, 25 MB the others: `bucket_caps`); `DLN_BUCKET_MB` sets
  the others'.
- **Overlap.** A backend that hands outputs over as it makes them (`ready`:
  the NumPy interpreter after a step, the Triton launcher after a kernel)
  has each gradient scaled into its bucket at once, and a full bucket's
  all_reduce started, asynchronously, while the backward goes on.  The
  buckets start in bucket order on every rank — whatever order this rank's
  plan finished them in — so the collectives pair up, in a process group of
  their own (`distributed.gradient_group`), so that the all_reduce ops of
  batch norm's statistics (sync_batchnorm), which the backward runs between
  them, keep their own order in the default one.
- **No copies.** NumPy buffers travel as `torch.from_numpy` views; the update
  graph reads its gradient inputs straight from the buckets' views, or,
  where a backend moved them (the Triton backend lays a multi-tensor
  kernel's inputs out back to back), from where it moved them (`_bind`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from dln.compiler.ir import Op
from dln.compiler.naming import GRADIENT
from dln.compiler.passes.global_rows import ROW
from dln.runtime import distributed
from dln.runtime.distributed import Communicator, Group, collectives, gradient_group, reduce_means, torch_view
from dln.runtime.numpy_ops import COMMUNICATOR, np_dtype

if TYPE_CHECKING:
    from dln.compiler.training import SplitStep
    from dln.runtime.backends import Backend

# DDP's default bucket size: big enough that each all_reduce moves many bytes per call.
BUCKET_BYTES = 25 * 2 ** 20
# DDP's first bucket: small, so that its all_reduce starts early in the backward.
FIRST_BUCKET_BYTES = 2 ** 20


@dataclass
class Bucket:
    flat: Any                          # one flat buffer of the backend's (a NumPy array, a torch tensor)
    views: dict[str, Any]              # parameter name -> its gradient's view into `flat`
    # (view, the update's input) where the update reads a copy: a backend that moved its inputs elsewhere.
    copies: list[tuple[Any, Any]] = field(default_factory=list)
    waiting: int = 0                   # gradients of this step not in the bucket yet
    work: Any = None                   # the all_reduce under way (torch.distributed's Work)
    extra: Any = None                  # the last bucket's slots after the gradients (`buckets(extra=...)`)


def bucket_caps() -> tuple[int, int]:
    """The caps of the first bucket and of the others, in bytes: DDP's 1 MB and 25 MB, the others'
    DLN_BUCKET_MB (DDP's `bucket_cap_mb`) when it is set, the first's no larger.

    Not smaller by default, for a small model to overlap more of its backward: on this 2-core machine
    (2 ranks over gloo) three or four buckets made the step slower than one — the MLP's 4.9 -> 7.2 ms,
    LeNet's 11.8 -> 12.8 ms (benchmarks/distributed.py): each all_reduce costs its latency, and no core is
    idle to hide it behind the backward."""
    cap = bucket_cap() or BUCKET_BYTES
    return min(cap, FIRST_BUCKET_BYTES), cap


def bucket_cap() -> int | None:
    """DLN_BUCKET_MB in bytes, None when it is not set."""
    mb = distributed.env_positive("DLN_BUCKET_MB", None, "megabytes")
    return None if mb is None else max(1, int(mb * 2 ** 20))


def buckets(step: SplitStep, backend: Backend, cap: int = BUCKET_BYTES, first_cap: int | None = None,
            order: Sequence[str] | None = None, extra: int = 0) -> list[Bucket]:
    """Flat buffers for the gradients `step.update` reads, one element type each, filled in `order` (the
    order the backward computes them; by default reverse model order) up to `cap` bytes — the first bucket
    up to `first_cap` (DDP's 1 MB: its all_reduce starts early in the backward); a larger gradient gets a
    bucket of its own.  The last bucket has `extra` slots more after its gradients (`Bucket.extra`)."""
    types = gradient_types(step)
    plan: list[tuple[np.dtype, list[tuple[str, tuple[int, ...]]]]] = []
    open_: dict[np.dtype, tuple[list, int]] = {}
    for name in (order if order is not None else reversed(step.params)):
        if name not in types:
            continue
        dtype = np_dtype(types[name].dtype)
        shape = tuple(int(d) for d in types[name].shape)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries, used = open_.get(dtype, (None, 0))
        limit = first_cap if first_cap is not None and plan and plan[0][1] is entries else cap
        if entries is None or used + size > limit:
            entries, used = [], 0
            plan.append((dtype, entries))
        entries.append((name, shape))
        open_[dtype] = (entries, used + size)
    out = []
    for k, (dtype, entries) in enumerate(plan):
        total = sum(int(np.prod(s, dtype=np.int64)) for _, s in entries)
        more = extra if k == len(plan) - 1 else 0
        flat = backend.asarray(np.zeros(total + more, dtype))
        views, offset = {}, 0
        for name, shape in entries:
            count = int(np.prod(shape, dtype=np.int64))
            views[name] = flat[offset:offset + count].reshape(shape)
            offset += count
        out.append(Bucket(flat, views, extra=flat[total:] if more else None))
    return out


def backward_order(prepared: Any) -> list[str]:
    """The parameters in the order a backend that hands outputs over (`hands_over`) makes their gradients."""
    return [name.removeprefix(GRADIENT) for name in prepared.handover_order() if name.startswith(GRADIENT)]


def gradient_types(step: SplitStep) -> dict[str, Any]:
    """The type of each gradient the update reads, by parameter name."""
    return {n.attrs["name"].removeprefix(GRADIENT): n.type for n in step.update.nodes
            if n.op is Op.INPUT and n.attrs["role"] == "grad"}


class GradientSync:
    """One optimizer's step across ranks: the gradient graph on this rank's rows, the buckets summed, the
    update graph on the averaged gradients, each bucket's all_reduce started as soon as the backward has
    filled it where the backend hands its gradients over (`ready`; see the module docstring)."""

    def __init__(self, group: Group, step: SplitStep, backend: Backend, persistent: Mapping[str, Any],
                 rng: Mapping[str, Any]) -> None:
        self.group = group
        self.step = step
        self.backend = backend
        self.rng = rng
        # This rank's first row in the global batch, from which its random draws count (passes.global_rows).
        self.row = backend.asarray(np.array(0, np.int64))
        self.gradients = backend.prepare(step.graph, {**persistent, ROW: self.row}, step.donate)
        self.overlaps = getattr(self.gradients, "hands_over", False)
        # The loss and metrics' sums travel in the last bucket, after its gradients (one all_reduce less a
        # step: the MLP's 2-process step 6.97 -> 5.83 ms over gloo, benchmarks/distributed.py).
        self.names = ["loss", *step.metrics]
        # Overlapping, the buckets fill in the order the backward computes the gradients, the first small;
        # else all start at the end: as few all_reduce calls as can be.
        first, cap = bucket_caps()
        order = backward_order(self.gradients) if self.overlaps else None
        self.buckets = buckets(step, backend, cap, first if self.overlaps else None, order, len(self.names))
        # The update reads the averaged gradients where the all_reduce left them: persistent inputs (tensors
        # of their own over the same memory: a backend may move them, as the Triton backend lays the inputs of
        # a multi-tensor kernel out back to back; `_bind` then follows them).
        grads = {name: _view(view) for b in self.buckets for name, view in b.views.items()}
        self.update = backend.prepare(step.update, {**persistent, **{GRADIENT + k: v for k, v in grads.items()}},
                                      step.update_donate or {})
        for b in self.buckets:
            _bind(b, grads)
        self.views = {name: view for b in self.buckets for name, view in b.views.items()}
        self.bucket_of = {GRADIENT + name: b for b in self.buckets for name in b.views}
        self.weight = 1.0
        self.started = 0   # buckets whose all_reduce has started, this step
        # The bucket the sums travel in: the last, unless a backend moved it (`_bind`) or its element type is
        # too narrow for them; then they go in an all_reduce of their own (`reduce_means`).
        last = self.buckets[-1] if self.buckets else None
        wide = last is not None and last.extra is not None and str(last.extra.dtype).endswith(("float32", "float64"))
        self.tally = last if wide else None
        self.tallied = False   # this step's sums are in the tally bucket: it may start
        # Batch norm's statistics across ranks (sync_batchnorm): the graph's all_reduce ops, run on the host.
        ops = collectives(getattr(self.gradients, "graph", step.graph))
        self.communicator = Communicator(group, ops) if ops else None
        self.exchange = gradient_group(group)

    def run(self, feeds: Mapping[str, Any] | None, env: Mapping[str, int], hyper: Mapping[str, Any],
            rows: int, total: int, first: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
        """One step: `rows` of this rank's (`feeds`: None when it has none at a short last batch), from row
        `first` of the global batch, among its `total`.  Returns the outputs of this rank's graphs (the
        gradient graph's, none without rows; the update's: `found_inf`), and the loss and metrics as means
        over all ranks' rows."""
        names = self.names
        be = self.backend
        for b in self.buckets:
            b.waiting, b.work = len(b.views), None
        self.started, self.tallied = 0, False
        if rows:
            be.copy_into(self.row, np.array(first, np.int64))
            self.weight = rows / total
            if self.communicator is not None:
                self.communicator.weight = self.weight
                env = {**env, COMMUNICATOR: self.communicator}
            if self.overlaps:
                results = dict(self.gradients.run(feeds, env, self._ready))
            else:
                results = dict(self.gradients.run(feeds, env))
                for name, array in results.items():
                    if name in self.bucket_of:
                        self._ready(name, array)
            means = {k: float(be.to_numpy(results[k])) for k in names}
        else:
            # No rows: nothing to add but the random step, which every rank advances alike.
            results = {}
            if self.communicator is not None:   # the others' batch statistics still need this rank's zeros
                self.communicator.replay()
            for b in self.buckets:
                b.flat[...] = 0
                b.waiting = 0
            self._start()
            be.copy_into(self.rng["rng.step"], be.to_numpy(self.rng["rng.step"]) + 1)
            means = dict.fromkeys(names, 0.0)
        if self.tally is not None:   # the sums, weighted by rows, into the last bucket, which may start now
            be.copy_into(self.tally.extra, np.array([means[k] * rows for k in names]))
            self.tallied = True
            self._start()
        if self.started < len(self.buckets):   # every gradient is an output: all full by now
            raise RuntimeError(f"gradients never computed: {[n for b in self.buckets if b.waiting for n in b.views]}")
        if self.tally is None:
            means = reduce_means(self.group, means, rows, total, "the all_reduce of the loss and metrics")
        for b in self.buckets:
            distributed.run_collective(self.group, "the all_reduce of the gradients", b.work.wait)
            for view, moved in b.copies:
                _scaled_copy(moved, view, 1.0)
        if self.tally is not None:
            sums = be.to_numpy(self.tally.extra)
            means = {k: float(v) / max(total, 1) for k, v in zip(names, sums)}
        results.update(self.update.run(hyper, {}))
        return results, means

    def _ready(self, name: str, array: Any) -> None:
        """A gradient the backward has finished: into its bucket, weighted; the buckets full by now start."""
        bucket = self.bucket_of.get(name)
        if bucket is None:
            return
        _scaled_copy(bucket.views[name.removeprefix(GRADIENT)], array, self.weight)
        bucket.waiting -= 1
        if bucket.waiting == 0:
            self._start()

    def _start(self) -> None:
        """Start the all_reduce of each full bucket, in bucket order: a bucket waits for those before it."""
        import torch.distributed as dist

        while self.started < len(self.buckets) and self.buckets[self.started].waiting == 0:
            b = self.buckets[self.started]
            if b is self.tally and not self.tallied:   # it carries the loss and metrics too: after the run
                break
            t = torch_view(b.flat)
            distributed.run_collective(self.group, "the all_reduce of the gradients",
                        lambda: setattr(b, "work", dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.exchange,
                                                                   async_op=True)))
            self.started += 1


def _view(like: Any) -> Any:
    """Another array or tensor object over the memory of `like`."""
    return like.view() if isinstance(like, np.ndarray) else like.view(like.shape)


def _address(t: Any) -> int:
    return t.__array_interface__["data"][0] if isinstance(t, np.ndarray) else t.data_ptr()


def _bind(bucket: Bucket, inputs: Mapping[str, Any]) -> None:
    """Make the bucket feed the update's gradient inputs (`inputs`, as the backend left them after
    preparing): where they still view the bucket, nothing to do; where the backend laid them out back to
    back elsewhere, that run becomes the bucket (the all_reduce works in place there); else each is
    copied from the bucket after the all_reduce."""
    if all(_address(inputs[n]) == _address(v) for n, v in bucket.views.items()):
        return
    moved = [inputs[n] for n in bucket.views]
    flat = _span(moved)
    if flat is not None:
        bucket.flat, bucket.views, bucket.extra = flat, {n: inputs[n] for n in bucket.views}, None
    else:
        bucket.copies = [(v, inputs[n]) for n, v in bucket.views.items()]


def _span(tensors: list[Any]) -> Any:
    """One flat torch tensor over `tensors` when they lie back to back in one storage (in any order), else
    None."""
    if isinstance(tensors[0], np.ndarray):
        return None
    storage = tensors[0].untyped_storage()
    if any(t.untyped_storage().data_ptr() != storage.data_ptr() or not t.is_contiguous() for t in tensors):
        return None
    runs = sorted((t.storage_offset(), t.numel()) for t in tensors)
    if any(start != prev + size for (prev, size), (start, _) in zip(runs, runs[1:])):
        return None
    flat = tensors[0].new_empty(0)
    flat.set_(storage, runs[0][0], (sum(size for _, size in runs),))
    return flat


def _scaled_copy(dst: Any, src: Any, weight: float) -> None:
    """dst = src * weight, in dst's memory (one pass: the copy into the bucket is the scaling)."""
    if isinstance(dst, np.ndarray):
        np.multiply(src, dst.dtype.type(weight), out=dst)
    else:
        dst.copy_(src).mul_(weight)
