"""Data-parallel training on `torch.distributed`: the process group, the sampler, the gradient exchange.

Every rank holds the whole model and runs the same training step on its own
rows of each batch.  The step is compiled in two graphs
(`pipeline.split_step`): the forward and backward give the rank's loss,
metrics and gradients; the host averages the gradients across ranks with
`all_reduce`; the update graph — gradient clipping, loss unscaling, the
optimizer — then makes the same update on every rank from the same averaged
gradients, so the parameters never drift apart.

The contract with one process (`dln train` at batch N·b):

- `batch` is the per-rank batch b, as PyTorch's DDP takes it.  The epoch's
  order is the one a single process draws (same seed); the global batch k is
  rows [k·N·b, (k+1)·N·b) of it, and rank r takes rows [r·b, (r+1)·b) of that
  (`shard`).  A short last batch leaves some ranks fewer rows, or none.
- A rank's loss is a mean over its rows, so its gradient is weighted by its
  share of the global batch (rows / total) before the sum: the sum is the
  gradient of the mean over the whole batch, what one process computes, even
  for the short last batch.  The loss and metrics are reduced the same way,
  so every rank reports the global figures; so is the validation
  (`reduce_means`).
- Random draws in the model (dropout) are counted from the rank's first row
  in the global batch (`rng.row`, dln.compiler.passes.global_rows): a row's
  mask is the one a single process draws for it.
- Gradients travel in flat buckets (DDP's sizes, smaller for a small model:
  `bucket_caps`), in the order the backward makes them, exchanged as torch
  tensors over the NumPy arrays (`torch.from_numpy`, no copies); each
  bucket's all_reduce starts, asynchronously, as soon as the backward has
  filled it (the backend's `ready`: the interpreter's, the Triton
  launcher's), and the update graph reads its gradient inputs straight from
  the buckets' views once all have arrived.  On the Triton backend the
  buffers are torch tensors on the GPU already, and the group's backend is
  `nccl`.
- Collectives time out (`DEFAULT_TIMEOUT`, `DLN_DIST_TIMEOUT` seconds): a
  rank that died or hangs ends the others with a dln error (E0720), never a
  silent hang.

The environment is the standard one (`torchrun`'s): RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT.  `dln train --nproc N` sets it for N
local workers (dln.runtime.launch).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from dln.compiler.ir import Op
from dln.compiler.passes.global_rows import ROW
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime.numpy_ops import COMMUNICATOR, np_dtype

if TYPE_CHECKING:
    from dln.compiler.training import SplitStep
    from dln.runtime.backends import Backend

# How long a collective waits for the other ranks before it gives up (seconds): long enough for a slow
# rank's first step (compiling its kernels), short enough that a dead rank does not hold the others for long.
DEFAULT_TIMEOUT = 300.0
# DDP's default bucket size: big enough that each all_reduce moves many bytes per call.
BUCKET_BYTES = 25 * 2 ** 20
# DDP's first bucket: small, so that its all_reduce starts early in the backward.
FIRST_BUCKET_BYTES = 2 ** 20
# A model whose gradients DDP's buckets would hold in one gets about four, none under this: over gloo
# a bucket's all_reduce costs ~0.3 ms whatever its size up to there, and LeNet's step (177 kB of
# gradients in 3 buckets) went from 0.52 to 0.74 scaling efficiency on 2 processes (benchmarks/distributed.py).
MIN_BUCKET_BYTES = 64 * 2 ** 10
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks, and the torch.distributed backend joining them."""

    rank: int
    size: int
    local_rank: int
    backend: str          # gloo (CPU buffers) or nccl (CUDA buffers)
    timeout: float

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes logs, the run directory, checkpoints and the progress bar."""
        return self.rank == 0


def environment_size(environ: Mapping[str, str] | None = None) -> int | None:
    """WORLD_SIZE as a launcher set it, or None outside a launcher."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    return _env_int(environ, "WORLD_SIZE", 1)


def from_environment(device: str = "cpu", environ: Mapping[str, str] | None = None) -> Group | None:
    """Join the process group a launcher (torchrun, `dln train --nproc`) described in the environment;
    None when there is no launcher or a single rank.  `device`: "cpu" (gloo) or "cuda" (nccl)."""
    environ = os.environ if environ is None else environ
    size = environment_size(environ)
    if size is None or size == 1:
        return None
    missing = [k for k in ENVIRONMENT if k not in environ and k != "LOCAL_RANK"]
    if missing:
        raise DlnError(Diagnostic("E0720", f"WORLD_SIZE={size} is set but {', '.join(missing)} "
                                           f"{'is' if len(missing) == 1 else 'are'} not", None,
                                  (Note("launch with torchrun --nproc-per-node N -m dln train FILE, or "
                                        "dln train FILE --nproc N"),)))
    rank = _env_int(environ, "RANK", 0, size - 1)
    local = _env_int(environ, "LOCAL_RANK", 0) if "LOCAL_RANK" in environ else rank
    timeout = float(environ.get("DLN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        import torch

        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        raise DlnError(Diagnostic(
            "E0720", f"rank {rank} of {size} could not join the process group at "
                     f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}: {_first_line(e)}", None,
            (Note("every rank must reach MASTER_ADDR:MASTER_PORT within the timeout (DLN_DIST_TIMEOUT, "
                  f"{timeout:g} s)"),))) from None
    return Group(rank, size, local, backend, timeout)


def leave(group: Group | None) -> None:
    """Leave the process group (at the end of training, or on the way out of an error)."""
    if group is None:
        return
    import torch.distributed as dist

    _GRADIENT_GROUPS.pop(group, None)
    if dist.is_initialized():
        dist.destroy_process_group()


def _env_int(environ: Mapping[str, str], key: str, low: int, high: int | None = None) -> int:
    text = environ[key]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise DlnError(Diagnostic("E0720", f"the environment variable {key}={text!r} must be an integer {bound}"))
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- collectives ---------------------------------------------------------------------------------------------
def _torch_view(buffer: Any):
    """A torch tensor sharing `buffer`'s memory: a NumPy array through torch.from_numpy, a tensor itself."""
    if isinstance(buffer, np.ndarray):
        import torch

        return torch.from_numpy(buffer)
    return buffer


def _collective(group: Group, what: str, run: Callable[[], Any]) -> None:
    """Run a collective; a rank that died or hangs (gloo's closed connection, the timeout) becomes a dln
    error naming what was being exchanged, so the rank exits rather than waits forever."""
    try:
        run()
    except (RuntimeError, ValueError) as e:   # torch.distributed.DistError derives from RuntimeError
        raise DlnError(Diagnostic(
            "E0720", f"rank {group.rank} of {group.size}: {what} failed: {_first_line(e)}", None,
            (Note(f"another rank has stopped, or hung for more than {group.timeout:g} s (DLN_DIST_TIMEOUT); "
                  "its own output says why"),
             Note("the last checkpoint written stays good: run again to resume from it")))) from None


def _each(group: Group, buffers: Sequence[Any], op: Callable[[Any], Any]) -> None:
    """`op` on a torch view of each buffer; under nccl, host buffers (the loss and metrics' sums) go
    through the GPU and back, as nccl reduces device memory only."""
    for b in buffers:
        t = _torch_view(b)
        if group.backend == "nccl" and t.device.type == "cpu":
            on_device = t.cuda()
            op(on_device)
            t.copy_(on_device.cpu())
        else:
            op(t)


def all_reduce(group: Group, buffers: Sequence[Any], what: str) -> None:
    """Sum each buffer across ranks, in place."""
    import torch.distributed as dist

    _collective(group, what, lambda: _each(group, buffers, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM)))


def broadcast(group: Group, buffers: Sequence[Any], what: str) -> None:
    """Rank 0's buffers to every rank, in place."""
    import torch.distributed as dist

    _collective(group, what, lambda: _each(group, buffers, lambda t: dist.broadcast(t, src=0)))


def reduce_means(group: Group, means: Mapping[str, float], rows: int, total: int, what: str) -> dict[str, float]:
    """Means over each rank's `rows`, as means over all `total` rows: weighted by rows, summed."""
    names = list(means)
    sums = np.array([means[k] * rows for k in names], np.float64)
    all_reduce(group, [sums], what)
    return {k: float(v) / max(total, 1) for k, v in zip(names, sums)}


# ---- the sampler -------------------------------------------------------------------------------------------------
def shard(batch: np.ndarray, rank: int, per_rank: int) -> np.ndarray:
    """Rank `rank`'s rows of one global batch: [rank·b, (rank+1)·b), fewer or none at a short last batch."""
    return batch[rank * per_rank:(rank + 1) * per_rank]


# ---- the gradient exchange ---------------------------------------------------------------------------------------
@dataclass
class Bucket:
    flat: Any                          # one flat buffer of the backend's (a NumPy array, a torch tensor)
    views: dict[str, Any]              # parameter name -> its gradient's view into `flat`
    # (view, the update's input) where the update reads a copy: a backend that moved its inputs elsewhere.
    copies: list[tuple[Any, Any]] = field(default_factory=list)
    waiting: int = 0                   # gradients of this step not in the bucket yet
    work: Any = None                   # the all_reduce under way (torch.distributed's Work)


def bucket_caps(gradient_bytes: int) -> tuple[int, int]:
    """The caps of the first bucket and of the others, in bytes, for gradients of `gradient_bytes` in all.
    DLN_BUCKET_MB (DDP's `bucket_cap_mb`) sets the others', the first staying under DDP's 1 MB; by default
    DDP's 25 MB, or a quarter of the gradients (at least MIN_BUCKET_BYTES) when that is less: a small model
    gets several buckets to overlap with its backward too."""
    cap = bucket_cap()
    if cap is None:
        cap = min(BUCKET_BYTES, max(MIN_BUCKET_BYTES, gradient_bytes // 4))
    return min(cap, FIRST_BUCKET_BYTES), cap


def bucket_cap() -> int | None:
    """DLN_BUCKET_MB in bytes, None when it is not set."""
    text = os.environ.get("DLN_BUCKET_MB")
    if text is None:
        return None
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise DlnError(Diagnostic("E0720", f"the environment variable DLN_BUCKET_MB={text!r} must be a number "
                                           "of megabytes > 0"))
    return max(1, int(mb * 2 ** 20))


def buckets(step: SplitStep, backend: Backend, cap: int = BUCKET_BYTES, first_cap: int | None = None,
            order: Sequence[str] | None = None) -> list[Bucket]:
    """Flat buffers for the gradients `step.update` reads, one element type each, filled in `order` (the
    order the backward computes them; by default reverse model order) up to `cap` bytes — the first bucket
    up to `first_cap` (DDP's 1 MB: its all_reduce starts early in the backward); a larger gradient gets a
    bucket of its own."""
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
    for dtype, entries in plan:
        total = sum(int(np.prod(s, dtype=np.int64)) for _, s in entries)
        flat = backend.asarray(np.zeros(total, dtype))
        views, offset = {}, 0
        for name, shape in entries:
            count = int(np.prod(shape, dtype=np.int64))
            views[name] = flat[offset:offset + count].reshape(shape)
            offset += count
        out.append(Bucket(flat, views))
    return out


def backward_order(prepared: Any) -> list[str]:
    """The parameters in the order a backend that hands outputs over (`hands_over`) makes their gradients."""
    return [name.removeprefix("grad:") for name in prepared.handover_order() if name.startswith("grad:")]


def gradient_types(step: SplitStep) -> dict[str, Any]:
    """The type of each gradient the update reads, by parameter name."""
    return {n.attrs["name"].removeprefix("grad:"): n.type for n in step.update.nodes
            if n.op is Op.INPUT and n.attrs["role"] == "grad"}


def gradient_bytes(step: SplitStep) -> int:
    """The bytes of the gradients the update reads: what each step's all_reduce moves."""
    return sum(int(np.prod([int(d) for d in t.shape], dtype=np.int64)) * np_dtype(t.dtype).itemsize
               for t in gradient_types(step).values())


class Communicator:
    """The `all_reduce` ops of a training graph (`sync_batchnorm`), run with this as the env's COMMUNICATOR
    by the NumPy interpreter (on arrays) and by the Triton backend's program between its kernels (on
    tensors, dln.kernels.collective): each sums its buffer across ranks in place.  A rank runs them in graph
    order, as every rank does, so the collectives pair up; a rank without rows at a short last batch runs
    the same sequence on zeros (`replay`).

    Each rank's loss is a mean over its own rows, and its gradients are weighted by its share of the global
    batch (`weight`) after the backward.  The backward's all_reduce (`weighted`) therefore weights each
    rank's cotangent by its share before the sum and divides the sum by this rank's after: the gradient
    that reaches this rank's rows is then the gradient of the mean loss over the whole batch, over its
    weight, as the rest of its gradients are — also when the ranks hold unequal rows."""

    def __init__(self, group: Group, nodes: Sequence[Any]) -> None:
        self.group = group
        self.nodes = list(nodes)   # the graph's all_reduce ops, in the order the interpreter runs them
        self.weight = 1.0
        self.device = None         # where the tensors it sums lie (None: NumPy arrays, or none summed yet)

    def __call__(self, node: Any, array: Any) -> None:
        """Sum `array` (a NumPy array or a torch tensor) across ranks, in place."""
        weighted = node.attrs.get("weighted", False)
        if isinstance(array, np.ndarray):
            weight = array.dtype.type(self.weight)
        else:   # a torch tensor scales by a Python number in its own type, as NumPy by the array's scalar
            weight, self.device = self.weight, array.device
        if weighted:
            array *= weight
        all_reduce(self.group, [array], "the all_reduce of batch norm's statistics (sync_batchnorm)")
        if weighted:
            array /= weight

    def replay(self) -> None:
        """This rank's part of each all_reduce without rows of its own: zeros, in the graph's order."""
        for n in self.nodes:
            self(n, self._zeros(n))

    def _zeros(self, node: Any) -> Any:
        """Zeros of `node`'s type, of the kind this rank sums: torch tensors on the device of those it summed
        (the GPU's under nccl, the Triton backend's), else NumPy arrays (the NumPy backend's)."""
        shape = tuple(int(d) for d in node.type.shape)
        if self.device is None:
            return np.zeros(shape, np_dtype(node.type.dtype))
        import torch

        dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, "f64": torch.float64}
        return torch.zeros(shape, dtype=dtype[node.type.dtype.value], device=self.device)

    def __repr__(self) -> str:   # (the interpreter keys its plans on the env: by identity, this)
        return f"Communicator(rank {self.group.rank} of {self.group.size})"


def collectives(graph: Any) -> list[Any]:
    """The graph's all_reduce ops, in graph order (the interpreter's)."""
    return [n for n in graph.nodes if n.op is Op.ALL_REDUCE]


def sync_batchnorm(model: Any, recipe: Any) -> None:
    """Build `model`'s training graphs with batch norm's statistics across ranks (`sync_batchnorm = true`,
    set in `recipe`'s train section).  The NumPy interpreter runs the all_reduce ops between its steps, the
    Triton backend's program between its kernels, on its device's buffers (dln.kernels.collective)."""
    if not model.sync_batchnorm:
        model.sync_batchnorm = True
        model._train_spec = None   # built again, with the all_reduce ops


class GradientSync:
    """One optimizer's step across ranks: the gradient graph on this rank's rows, the buckets summed, the
    update graph on the averaged gradients (see the module docstring).

    A backend that hands outputs over as it computes them (`ready`: the NumPy interpreter, the Triton
    launcher) has each
    gradient scaled into its bucket as soon as the backward has made it, and a full bucket's all_reduce
    started then, asynchronously, while the backward goes on (DDP's overlap).  The buckets start in their
    order on every rank, whatever order this rank's plan finished them in, so the collectives pair up;
    they run in a process group of their own, so that the all_reduce ops of batch norm's statistics
    (sync_batchnorm), which the backward runs between them, keep their own order in the default one."""

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
        if self.overlaps:   # the buckets fill in the order the backward computes the gradients
            first, cap = bucket_caps(gradient_bytes(step))
            self.buckets = buckets(step, backend, cap, first, backward_order(self.gradients))
        else:   # all at the end: as few all_reduce calls as can be
            self.buckets = buckets(step, backend, bucket_cap() or BUCKET_BYTES)
        # The update reads the averaged gradients where the all_reduce left them: persistent inputs (tensors
        # of their own over the same memory: a backend may move them, as the Triton backend lays the inputs of
        # a multi-tensor kernel out back to back; `_bind` then follows them).
        grads = {name: _view(view) for b in self.buckets for name, view in b.views.items()}
        self.update = backend.prepare(step.update, {**persistent, **{f"grad:{k}": v for k, v in grads.items()}},
                                      step.update_donate or {})
        for b in self.buckets:
            _bind(b, grads)
        self.views = {name: view for b in self.buckets for name, view in b.views.items()}
        self.bucket_of = {f"grad:{name}": b for b in self.buckets for name in b.views}
        self.weight = 1.0
        self.started = 0   # buckets whose all_reduce has started, this step
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
        names = ["loss", *self.step.metrics]
        be = self.backend
        for b in self.buckets:
            b.waiting, b.work = len(b.views), None
        self.started = 0
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
        if self.started < len(self.buckets):   # every gradient is an output: all full by now
            raise RuntimeError(f"gradients never computed: {[n for b in self.buckets if b.waiting for n in b.views]}")
        means = reduce_means(self.group, means, rows, total, "the all_reduce of the loss and metrics")
        for b in self.buckets:
            _collective(self.group, "the all_reduce of the gradients", b.work.wait)
            for view, moved in b.copies:
                _scaled_copy(moved, view, 1.0)
        results.update(self.update.run(hyper, {}))
        return results, means

    def _ready(self, name: str, array: Any) -> None:
        """A gradient the backward has finished: into its bucket, weighted; the buckets full by now start."""
        bucket = self.bucket_of.get(name)
        if bucket is None:
            return
        _scaled_copy(bucket.views[name.removeprefix("grad:")], array, self.weight)
        bucket.waiting -= 1
        if bucket.waiting == 0:
            self._start()

    def _start(self) -> None:
        """Start the all_reduce of each full bucket, in bucket order: a bucket waits for those before it."""
        import torch.distributed as dist

        while self.started < len(self.buckets) and self.buckets[self.started].waiting == 0:
            b = self.buckets[self.started]
            t = _torch_view(b.flat)
            _collective(self.group, "the all_reduce of the gradients",
                        lambda: setattr(b, "work", dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.exchange,
                                                                   async_op=True)))
            self.started += 1


def gradient_group(group: Group) -> Any:
    """The process group the gradient buckets travel in: one of their own beside the default (created once,
    by every rank in the same order, as torch.distributed.new_group requires)."""
    import torch.distributed as dist

    if group not in _GRADIENT_GROUPS:
        _GRADIENT_GROUPS[group] = dist.new_group(backend=group.backend,
                                                 timeout=datetime.timedelta(seconds=group.timeout))
    return _GRADIENT_GROUPS[group]


_GRADIENT_GROUPS: dict[Group, Any] = {}


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
        bucket.flat, bucket.views = flat, {n: inputs[n] for n in bucket.views}
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


def broadcast_state(group: Group, persistent: Mapping[str, Any], what: str = "the initial weights") -> None:
    """Rank 0's parameters or model state to every rank, in place.  Before the first step (DDP does the same):
    the ranks start equal whatever drew or loaded their weights.  The model state (batch norm's running
    statistics, which each rank updates from its own rows) before each evaluation and at the end: the
    ranks evaluate, and return, the weights rank 0 saves."""
    broadcast(group, [persistent[k] for k in sorted(persistent)], f"the broadcast of {what}")
