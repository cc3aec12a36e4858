"""The Triton backend: generated kernels, run on a GPU or through Triton's interpreter.

`prepare` plans and generates the kernel module of a graph (dln.kernels),
stores it in a content-hashed cache — Python source plus a JSON record,
written atomically, so concurrent processes share it safely — imports it,
and returns an executable.  Tensors are torch tensors on the GPU when one is
visible, else on the CPU, where the same kernels run under
`TRITON_INTERPRET=1` (slow, exact: for testing).  Feeds are copied into
fixed buffers per size binding, so a step's launches can be recorded once and
replayed (kernels/prebound.py) and, on a GPU, captured as a CUDA graph
(runtime/step_graphs.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dln.compiler.ir import Graph, GroupOp, Node
from dln.dsl.diagnostics import Diagnostic, DlnError
from dln.runtime.checkpoint import write_text
from dln.runtime.checks import check_sizes, index_bound, index_checks, index_error, value_bytes
from dln.runtime.init import physical_memory
from dln.runtime.numpy_ops import COMMUNICATOR
from dln.runtime.step_graphs import StepGraphs, why_no_graphs


def cache_dir() -> Path:
    root = os.environ.get("DLN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dln")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_module(source: str, record: Mapping[str, Any]):
    """Import generated source through the cache (the key is the source's hash).  Under Triton's
    interpreter, its float32 -> bf16 conversion first made to round as a GPU's does
    (dln.runtime.triton_interpreter): every kernel that runs here is loaded through this."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from dln.runtime.triton_interpreter import faithful_bf16

        faithful_bf16()
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    directory = cache_dir()
    path = directory / f"dln_{key}.py"
    if not path.exists() or path.read_text() != source:
        write_text(path, source)
        write_text(directory / f"dln_{key}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    spec = importlib.util.spec_from_file_location(f"dln_kernels_{key}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine_of(device) -> "Machine | None":
    """The cost model's description of `device` (dln.compiler.fusion.target: A100, H100 by compute
    capability), None off a GPU or for a GPU it does not describe (planned as for no machine)."""
    if device.type != "cuda":
        return None
    import torch

    from dln.compiler.fusion.target import BY_ARCH

    major, minor = torch.cuda.get_device_capability(device)
    return BY_ARCH.get(f"sm_{major}{minor}")


def outside_autograd(method):
    """Run `method` under torch.no_grad(): persistent buffers may be the nn.Parameters of
    `model.as_torch()`'s module (shared with the model), and kernels, copies and loads write them
    in place, which autograd forbids on a leaf that requires grad."""
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)

    return run


class TritonBackend:
    name = "triton"

    def __init__(self, precision: str = "ieee", cuda_graphs: bool = True) -> None:
        import torch

        from dln.kernels.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"unknown matmul precision {precision!r}")
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision
        self.cuda_graphs = cuda_graphs   # on a GPU, replay whole steps as CUDA graphs (runtime/step_graphs.py)

    def asarray(self, array: np.ndarray):
        # np.ascontiguousarray makes a 0-d array 1-d: keep the shape (a scalar such as rng.step stays one).
        return self.torch.tensor(_contiguous(array), device=self.device)

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        if value.dtype == self.torch.bfloat16:  # NumPy has no bfloat16: read as float32, as the NumPy backend computes
            value = value.float()
        return value.detach().cpu().numpy()

    @outside_autograd
    def copy_into(self, dst, src: np.ndarray) -> None:
        dst.copy_(self.torch.from_numpy(_contiguous(src)).to(dst.dtype))

    @outside_autograd
    def assign(self, dst, src, tau: float | None = None) -> None:
        """One buffer into another on the device (`Model.copy_from`): `src`, or `tau * src + (1 - tau) * dst`."""
        dst.copy_(src if tau is None else tau * src + (1.0 - tau) * dst)

    def prepare(self, graph: Graph, persistent: Mapping[str, Any], donate: Mapping[str, str]) -> "TritonExecutable":
        return TritonExecutable(self, graph, persistent, donate)


class TritonExecutable:
    def __init__(self, backend: TritonBackend, graph: Graph, persistent: Mapping[str, Any],
                 donate: Mapping[str, str]) -> None:
        from dln.kernels.module import TORCH_DTYPES, generate_module

        self.backend = backend
        self.graph = graph
        # Class indices (losses, one_hot) and gather indices come back as extra outputs, checked on
        # the device after the step: the kernels mask a bad index out (it matches no class, reads nothing).
        self.checks = index_checks(graph)
        if self.checks:
            graph = graph.with_outputs(list(graph.outputs) + [(_check_output(n), i) for n, i in self.checks])
        # On a GPU the kernels are planned to fill it (split-K, split reductions: dln.kernels.gpu_model), for
        # the representative batch; any batch runs correctly.
        self.generated = generate_module(graph, donate, backend.precision, machine=machine_of(backend.device))
        record = {"graph": graph.name, "kernels": [k.name for k in self.generated.kernels],
                  "configs": self.generated.configs}
        self.module = load_module(self.generated.source, record)
        self.program = self.module.Program(backend.device)
        # The graph's collectives (sync_batchnorm's all_reduce) in the order the program exchanges them, the
        # graph's (the planner keeps it): the program's collective k is the communicator's node k, as a rank
        # without rows replays them (dln.runtime.distributed.Communicator).
        self.collectives = [n for n in graph.nodes if n.op in GroupOp.Collective]
        plan = self.generated.plan
        exchanged = [plan.graph.node(group.members[0]) for group in plan.groups if group.kind == "collective"]
        assert [(n.type, n.attrs) for n in exchanged] == [(n.type, n.attrs) for n in self.collectives], (
            "the program exchanges other collectives than the graph's, or in another order")
        self.graphs = StepGraphs(self.program, why_no_graphs(backend.device, self.program, backend.cuda_graphs))
        self.fed: dict[tuple, dict[str, Any]] = {}   # per size binding, the feeds' buffers on the device
        self.persistent = persistent
        # Arrays arrive as NumPy holds them (bf16 as float32): tensors take the graph's types, in place,
        # so every reference to a parameter stays valid.
        self.input_dtypes = {n.attrs["name"]: getattr(backend.torch, TORCH_DTYPES[n.dtype].split(".")[1])
                             for n in graph.inputs}
        for name, tensor in persistent.items():
            want = self.input_dtypes.get(name)
            if want is not None and tensor.dtype != want:
                tensor.data = tensor.data.to(want)
        for names in self.generated.persistent_arenas:
            relocate([persistent[n] for n in names], backend.torch)
        plan = self.generated.plan
        self.stored = [plan.graph.node(m) for group in plan.groups for m in group.stores]
        self.sized: set[tuple] = set()
        # Outputs the plan could not write in place (their kernel still reads the old value
        # elsewhere) are copied over their inputs after the step.
        in_place = self.generated.plan.memory.donated
        planned = plan.graph   # lowered: its node ids, not the step graph's, are the plan's
        self.copy_back = [(out, inp) for out, inp in donate.items() if inp in persistent
                          and out in planned.output_names and planned.output(out).id not in in_place]

    @property
    def hands_over(self) -> bool:
        """Whether `run` hands outputs over as the kernels finish them (`ready`): the gradients, when the
        graph has them (kernels/module.py)."""
        return bool(getattr(self.program, "handovers", ()))

    def handover_order(self) -> list[str]:
        """The outputs `ready` receives, in the order it receives them (the launch order)."""
        return list(getattr(self.program, "handovers", ()))

    @outside_autograd
    def run(self, feeds: Mapping[str, Any], env: Mapping[str, Any],
            ready: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
        """One run on `feeds`, sizes bound by `env`; data-parallel training adds the communicator that sums
        the graph's collectives across ranks (env[COMMUNICATOR], dln.runtime.distributed.Communicator), and
        `ready(name, tensor)`, called for each gradient right after the kernel that finishes it is launched
        (on a GPU the tensor is final once the kernels before on the stream have run: what an all_reduce
        enqueued then waits for).  A run with `ready` is not replayed as a CUDA graph."""
        torch = self.backend.torch
        if self.hands_over:
            self.program.ready = ready
        if COMMUNICATOR in env or self.collectives:
            env = dict(env)
            communicate = env.pop(COMMUNICATOR, None)
            nodes = self.collectives
            self.program.communicate = None if communicate is None else lambda k, t: communicate(nodes[k], t)
        key = tuple(sorted(env.items()))
        if key not in self.sized:
            self._check_sizes(dict(env))
            self.sized.add(key)
        bufs: dict[str, Any] = dict(self.persistent)
        bufs.update(self._feed(key, feeds))
        for names in self.generated.persistent_arenas:
            tensors = [self.persistent[n] for n in names]
            if not contiguous_run(tensors):
                relocate(tensors, torch)
        try:
            outputs = None
            if self.graphs.reason is None and ready is None:
                outputs = self.graphs.run((key, tuple(t.data_ptr() for t in bufs.values())), bufs, dict(env))
            if outputs is None:
                outputs = self.program(bufs, dict(env))
        except (MemoryError, RuntimeError) as e:
            # The sizes were checked one by one: together they may still not fit.
            if not isinstance(e, (MemoryError, torch.OutOfMemoryError)) and "can't allocate memory" not in str(e):
                raise
            largest = max(self.stored, key=lambda n: value_bytes(n, env))
            raise DlnError(Diagnostic("E0706", f"the step's values do not fit in memory together ({e}); the "
                                               f"largest is {largest.type}", largest.loc)) from None
        for n, _ in self.checks:
            indices = outputs.pop(_check_output(n))
            size = index_bound(self.graph, n, env)
            # One reduction and one read back per step (a launch each, on a GPU); the culprit only on failure.
            low, high = torch.stack(torch.aminmax(indices)).tolist() if indices.numel() else (0, 0)
            if low < 0 or high >= size:
                bad = (indices < 0) | (indices >= size)
                raise index_error(n, int(indices[bad][0]), size)
        for out, inp in self.copy_back:
            self.persistent[inp].copy_(outputs[out])
            outputs[out] = self.persistent[inp]
        return outputs

    def _feed(self, key: tuple, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """The feeds copied into the binding's buffers on the device, which stay put from step to step: the
        program's recorded launches (and a CUDA graph) read them there.  A scalar (the learning rate, the
        step count) is written by a fill, which needs no copy from the host's memory."""
        torch = self.backend.torch
        if key not in self.fed and len(self.fed) >= 16:   # the shapes keep changing: keep the latest only
            self.fed.clear()
        fixed = self.fed.setdefault(key, {})
        out = {}
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(_contiguous(value))
            dtype = self.input_dtypes.get(name, value.dtype)
            buf = fixed.get(name)
            if buf is None or buf.shape != value.shape or buf.dtype != dtype:
                buf = fixed[name] = torch.empty(value.shape, dtype=dtype, device=self.backend.device)
            if value.dim() == 0 and value.device.type == "cpu":
                buf.fill_(value.item())
            else:
                buf.copy_(value)
            out[name] = buf
        return out

    def _check_sizes(self, env: dict[str, int]) -> None:
        """Every value the kernels store, sized from the bound symbols before the launcher allocates it."""
        torch = self.backend.torch
        if self.backend.device.type == "cuda":
            available = torch.cuda.get_device_properties(self.backend.device).total_memory
            where = "the GPU's memory"
        else:
            available, where = physical_memory(), "this machine's memory"
        check_sizes(self.stored, env, available, where)


def _check_output(node: Node) -> str:
    return f"check:{node.id}"


def _contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy or view of `array`, of the same shape (0-d included)."""
    array = np.asarray(array)
    return np.ascontiguousarray(array).reshape(array.shape)


def contiguous_run(tensors) -> bool:
    base = tensors[0].data_ptr()
    offset = 0
    for t in tensors:
        if not t.is_contiguous() or t.data_ptr() != base + offset * t.element_size():
            return False
        offset += t.numel()
    return True


def relocate(tensors, torch) -> None:
    """Lay tensors out back to back in one buffer, keeping each tensor object (and so every
    reference to it) valid: each is re-pointed at its slice of the new storage."""
    if contiguous_run(tensors):
        return
    total = sum(t.numel() for t in tensors)
    arena = torch.empty(total, dtype=tensors[0].dtype, device=tensors[0].device)
    offset = 0
    for t in tensors:
        n = t.numel()
        arena[offset:offset + n].copy_(t.reshape(-1))
        with torch.no_grad():
            t.set_(arena.untyped_storage(), offset, t.shape)
        offset += n
