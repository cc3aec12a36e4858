"""Data-parallel training on `torch.distributed`: the process group, its collectives, the sampler.

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
- Gradients travel in flat buckets, each summed by an all_reduce started
  while the backward goes on (dln.runtime.gradient_sync: the buckets and
  `GradientSync`, the step across ranks).  On the Triton backend the
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
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dln.compiler.ir import Op
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime.numpy_ops import np_dtype

# How long a collective waits for the other ranks before it gives up (seconds): long enough for a slow
# rank's first step (compiling its kernels), short enough that a dead rank does not hold the others for long.
DEFAULT_TIMEOUT = 300.0
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
    timeout = timeout_seconds(environ)
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


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a collective waits for the other ranks: DLN_DIST_TIMEOUT seconds, DEFAULT_TIMEOUT unset."""
    return env_positive("DLN_DIST_TIMEOUT", DEFAULT_TIMEOUT, "seconds", environ)


def env_positive(key: str, default: float | None, unit: str,
                 environ: Mapping[str, str] | None = None) -> float | None:
    """The environment variable `key` as a finite number of `unit` > 0; `default` when it is not set."""
    environ = os.environ if environ is None else environ
    text = environ.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise DlnError(Diagnostic("E0720", f"the environment variable {key}={text!r} must be a number of {unit} "
                                           "> 0"))
    return value


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
def torch_view(buffer: Any):
    """A torch tensor sharing `buffer`'s memory: a NumPy array through torch.from_numpy, a tensor itself."""
    if isinstance(buffer, np.ndarray):
        import torch

        return torch.from_numpy(buffer)
    return buffer


def run_collective(group: Group, what: str, run: Callable[[], Any]) -> None:
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
        t = torch_view(b)
        if group.backend == "nccl" and t.device.type == "cpu":
            on_device = t.cuda()
            op(on_device)
            t.copy_(on_device.cpu())
        else:
            op(t)


def all_reduce(group: Group, buffers: Sequence[Any], what: str) -> None:
    """Sum each buffer across ranks, in place."""
    import torch.distributed as dist

    run_collective(group, what, lambda: _each(group, buffers, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM)))


def broadcast(group: Group, buffers: Sequence[Any], what: str) -> None:
    """Rank 0's buffers to every rank, in place."""
    import torch.distributed as dist

    run_collective(group, what, lambda: _each(group, buffers, lambda t: dist.broadcast(t, src=0)))


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

        from dln.kernels.module import TORCH_DTYPES

        dtype = getattr(torch, TORCH_DTYPES[node.type.dtype].removeprefix("torch."))
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def __repr__(self) -> str:   # (the interpreter keys its plans on the env: by identity, this)
        return f"Communicator(rank {self.group.rank} of {self.group.size})"


def collectives(graph: Any) -> list[Any]:
    """The graph's all_reduce ops, in graph order (the interpreter's)."""
    return [n for n in graph.nodes if n.op is Op.ALL_REDUCE]


def sync_batchnorm(model: Any) -> None:
    """Build `model`'s training graphs with batch norm's statistics across ranks (`sync_batchnorm = true` in
    the train section, `--sync-batchnorm`).  The NumPy interpreter runs the all_reduce ops between its steps,
    the Triton backend's program between its kernels, on its device's buffers (dln.kernels.collective)."""
    if not model.sync_batchnorm:
        model.sync_batchnorm = True
        model._train_spec = None   # built again, with the all_reduce ops


def gradient_group(group: Group) -> Any:
    """The process group the gradient buckets travel in: one of their own beside the default (created once,
    by every rank in the same order, as torch.distributed.new_group requires)."""
    import torch.distributed as dist

    if group not in _GRADIENT_GROUPS:
        _GRADIENT_GROUPS[group] = dist.new_group(backend=group.backend,
                                                 timeout=datetime.timedelta(seconds=group.timeout))
    return _GRADIENT_GROUPS[group]


_GRADIENT_GROUPS: dict[Group, Any] = {}


def broadcast_state(group: Group, persistent: Mapping[str, Any], what: str = "the initial weights") -> None:
    """Rank 0's parameters or model state to every rank, in place.  Before the first step (DDP does the same):
    the ranks start equal whatever drew or loaded their weights.  The model state (batch norm's running
    statistics, which each rank updates from its own rows) before each evaluation and at the end: the
    ranks evaluate, and return, the weights rank 0 saves."""
    broadcast(group, [persistent[k] for k in sorted(persistent)], f"the broadcast of {what}")
