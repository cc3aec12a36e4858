"""One importable Python module per compiled graph: the kernels and their launcher.

The module imports only torch and triton.  `Program(device)(buffers, sizes)`
runs the graph: it takes the input tensors by name and the values of the
symbolic dimensions, lays out the intermediate buffers of the memory plan
(slots reused across kernels and steps), launches every kernel in order and
returns the outputs by name.  On a GPU each kernel runs with the cost
model's configuration (`CONFIGS`; `AUTOTUNE` lists candidates for
`triton.autotune`, `TUNING` the arguments tuning must restore, see
kernels/tuning.py); under Triton's interpreter blocks are sized to the data
at launch time.  `Program.launch` is the launcher as it reads; a call records
what it launches once per size binding and input buffers and replays that
afterwards (kernels/prebound.py), the lean path a small batch on a GPU needs.
A collective (sync_batchnorm's `all_reduce`) is a function the launcher
calls between kernels (kernels/collective.py), through the program's
`communicate`, which the runtime sets.  A graph with gradient outputs hands
each over (the program's `ready`, which the runtime sets) right after the
kernel that finishes it: data parallelism starts its all_reduce there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from dln.compiler.fusion.planner import FusionPlan, plan_graph
from dln.compiler.fusion.target import Machine
from dln.compiler.ir import DType, Graph, GroupOp, Op
from dln.compiler.naming import GRADIENT
from dln.compiler.pipeline import lower
from dln.compiler.symbolic import numel
from dln.kernels.configs import (
    INTERPRETER_CONFIG,
    SIZED_CONFIG,
    autotune_candidates,
    epilogue_weight,
    gpu_config,
    size_ranges,
)
from dln.kernels.emitter import comment, render_dim
from dln.kernels.lowering import HELPERS
from dln.kernels.prebound import prebound_source
from dln.kernels.report import computed_nodes
from dln.kernels.kinds import generate, kept_in
from dln.kernels.templates import KernelSource
from dln.kernels.tuning import cache_name, tuned_source

TORCH_DTYPES = {
    DType.F16: "torch.float16", DType.BF16: "torch.bfloat16", DType.F32: "torch.float32",
    DType.F64: "torch.float64", DType.I32: "torch.int32", DType.I64: "torch.int64", DType.BOOL: "torch.bool",
}


@dataclass
class GeneratedModule:
    source: str
    plan: FusionPlan
    kernels: list[KernelSource]
    configs: dict[str, dict[str, int]]
    persistent_arenas: list[list[str]] = field(default_factory=list)   # input names laid out back to back


def generate_module(graph: Graph, donate: Mapping[str, str] | None = None, precision: str = "ieee",
                    title: str = "", machine: Machine | None = None,
                    sizes: Mapping[str, int] | None = None) -> GeneratedModule:
    """With a `machine`, kernels are planned to fill it at `sizes` (the batch; dln.kernels.gpu_model)."""
    target = None
    if machine is not None:
        from dln.kernels.gpu_model import target_for

        target = target_for(machine, graph, sizes, precision)
    plan = plan_graph(lower(graph, kept_in(graph)), donate, target)
    kernels = [generate(plan, group, k, precision) for k, group in enumerate(plan.groups)]
    configs = kernel_configs(plan, kernels, precision)
    ranges = kernel_size_ranges(plan, kernels, precision)
    source = _module_source(plan, kernels, configs, title or graph.name, ranges)
    arenas = [[plan.graph.node(n).attrs["name"] for n in a.nodes] for a in plan.memory.arenas if a.persistent]
    return GeneratedModule(source, plan, kernels, configs, arenas)


def kernel_configs(plan: FusionPlan, kernels: list[KernelSource], precision: str = "ieee") -> dict[str, dict[str, int]]:
    """The cost model's launch configuration of every Triton kernel (a host loop's inner kernels too), at
    the representative batch."""
    configs = {}
    for kernel, group in zip(kernels, plan.groups):
        if kernel.host:
            configs.update(kernel.inner_configs)
            continue
        configs[kernel.name] = gpu_config(kernel.kind, kernel.sizes, **config_inputs(plan, group, precision))
    return configs


def kernel_size_ranges(plan: FusionPlan, kernels: list[KernelSource], precision: str = "ieee") -> dict[str, list]:
    """Per kernel whose tiles follow the batch, its configuration per range of sizes (`size_ranges`)."""
    ranges = {}
    for kernel, group in zip(kernels, plan.groups):
        if not kernel.host:
            rows = size_ranges(kernel.kind, kernel.sizes, **config_inputs(plan, group, precision))
            if rows:
                ranges[kernel.name] = rows
    return ranges


def config_inputs(plan: FusionPlan, group, precision: str) -> dict:
    """What the configuration of a group's kernel depends on besides its sizes: the epilogue's weight, and
    for a contraction the precision and its operands' type (whether it runs on the tensor cores)."""
    nodes = computed_nodes(plan, group)
    draws = sum(n.op is Op.RAND for n in nodes)
    weight = epilogue_weight(sum(n.op not in GroupOp.Contraction and n.op is not Op.INPUT for n in nodes),
                             draws, len(group.stores))
    first = plan.graph.node(group.members[0])
    dtype = plan.graph.node(first.inputs[0]).dtype if first.op in GroupOp.Contraction else DType.F32
    return {"epilogue_weight": weight, "precision": precision, "dtype": dtype, "random_draws": draws}


def jit_kernels(kernels: list[KernelSource]) -> list[KernelSource]:
    """The Triton kernels among `kernels`: a host function's are its inner kernels (at any depth)."""
    out = []
    for k in kernels:
        out += jit_kernels(k.inner) if k.host else [k]
    return out


def tuning_hooks(plan: FusionPlan, kernels: list[KernelSource]) -> dict[str, dict[str, list[str]]]:
    """Per Triton kernel, the arguments `triton.autotune` must put back around each timed run: outputs the
    kernel writes over a buffer it reads (donated to an input: parameters, optimizer moments, the random
    counter) are restored (`restore_value`); accumulators it adds into with atomics after the launcher
    zeroed them are zeroed again (`reset_to_zero`).  A host loop's body is planned without donations, so
    its kernels only ever reset; a two-stage kernel's (kernels/splitk.py) second stage writes the update in
    place and restores like any other."""
    hooks = {}
    for kernel, group in zip(kernels, plan.groups):
        for k in jit_kernels([kernel]):
            # A kernel over the plan's graph (a split kernel's stages too, not a loop body's) may write in place.
            in_place = {m for m in group.stores if m in plan.memory.donated} if k.graph is None else set()
            if k.kind == "multi_tensor":   # it writes through its inputs' pointers (arenas), not its outputs'
                in_place = {plan.memory.donated[m] for m in in_place}
            hooks[k.name] = {"restore_value": [p.name for p in k.pointers if p.node in in_place
                                               and p.node not in k.zero_outputs],
                             "reset_to_zero": [p.name for p in k.pointers if p.node in k.zero_outputs]}
    return hooks


def _hosts(kernels: list[KernelSource]) -> list[KernelSource]:
    """The host loops among `kernels` and, at any depth, among their inner kernels."""
    out = []
    for k in kernels:
        if k.host:
            out += [k, *_hosts(k.inner)]
    return out


def _sources(kernel: KernelSource) -> list[str]:
    """A kernel's source after those of its inner kernels (a host loop's, at any depth: a nested scan)."""
    out = []
    for inner in kernel.inner:
        out += _sources(inner)
    return out + ["", kernel.source.rstrip("\n"), ""]


def _module_source(plan: FusionPlan, kernels: list[KernelSource], configs: dict, title: str,
                   ranges: dict | None = None) -> str:
    out = [
        f'"""Triton kernels for {comment(title)}, generated by dln. Do not edit: recompile the .dln file.',
        "",
        f"{len(kernels)} kernels; `Program(device)(buffers, sizes)` runs them in order.",
        '"""',
        "",
        "import inspect",
        "import json",
        "import os",
        "import warnings",
        "from typing import Any, Callable",
        "",
        "import torch",
        "import triton",
        "import triton.language as tl",
        "",
        HELPERS.strip("\n"),
        "",
    ]
    for kernel in kernels:
        out += _sources(kernel)
    jit = jit_kernels(kernels)
    out += ["", "CONFIGS = " + json.dumps(configs, indent=4, sort_keys=True), ""]
    out += ["# Kernels whose tiles follow the batch: [limits, config] rows, the first whose limits hold (each size",
            "# at most its limit) serves the launch; CONFIGS has each one's configuration at a batch of 128.",
            "SIZE_RANGES = " + _ranges_source(ranges or {}), ""]
    out += ["AUTOTUNE = " + json.dumps({k.name: autotune_candidates(k.kind) for k in jit}, indent=4), ""]
    out += ["KINDS = " + json.dumps({k.name: k.kind for k in [*jit, *_hosts(kernels)]}, indent=4), ""]
    out += ["KEYS = " + json.dumps({k.name: [f"s_{s}" for s in k.symbols] for k in jit}, indent=4), ""]
    hooks = tuning_hooks(plan, kernels)
    for k in jit:
        hooks[k.name]["cache"] = cache_name(k.name, k.source, autotune_candidates(k.kind))
    out += ["TUNING = " + json.dumps(hooks, indent=4), ""]
    out += ["", tuned_source().rstrip("\n"), ""]
    out += ["", prebound_source().rstrip("\n"), ""]
    out += [INTERPRETER_CONFIG.strip("\n"), ""]
    out += ["", SIZED_CONFIG.strip("\n"), ""]
    out += _launcher(plan, kernels)
    return "\n".join(out) + "\n"


def _ranges_source(ranges: dict) -> str:
    """SIZE_RANGES as JSON with one row a line."""
    if not ranges:
        return "{}"
    out = ["{"]
    for name, rows in ranges.items():
        out.append(f"    {json.dumps(name)}: [")
        out += [f"        [{json.dumps(limits)}, {json.dumps(config)}]," for limits, config in rows]
        out.append("    ],")
    return "\n".join(out + ["}"])


def _tensor(node_id: int) -> str:
    return f"t{node_id}"


def _launcher(plan: FusionPlan, kernels: list[KernelSource]) -> list[str]:
    g = plan.graph
    mem = plan.memory
    inputs = [n for n in g.nodes if n.op is Op.INPUT]
    symbols = sorted(g.symbols())
    lines = [
        "",
        f"INPUTS = {json.dumps([n.attrs['name'] for n in inputs])}",
        f"OUTPUTS = {json.dumps(g.output_names)}",
        f"SYMBOLS = {json.dumps(symbols)}",
        "",
        "",
        "class Program:",
        '    """The whole graph: buffers in, buffers out (outputs alias the workspace until the next call)."""',
        "",
        f"    inputs = {json.dumps([n.attrs['name'] for n in inputs])}",
        f"    symbols = {json.dumps(symbols)}",
        "    prebound = True   # replay each binding's recorded launches (`Tape`); False: `launch` every call",
    ]
    collectives = sum(k.kind == "collective" for k in kernels)
    if collectives:   # steps on the host between kernels (kernels/collective.py)
        lines += [
            f"    collectives = {collectives}   # host steps that sum values across ranks: no CUDA graph replays them",
            "    communicate = None   # the runtime's (index, tensor): sums the tensor across ranks in place",
        ]
    handovers = _handovers(plan)
    hand_over: list[str] = []
    if any(handovers):   # the gradients, each as soon as the kernels making it are launched
        lines += [
            f"    handovers = {json.dumps([name for names in handovers for name, _ in names])}",
            "    ready = None   # the runtime's (name, tensor) for each: data parallelism starts its all_reduce",
        ]
        hand_over = [
            "    def _hand_over(self, name, t):",
            "        if self.ready is not None:",
            "            self.ready(name, t)",
            "        if self._tape is not None:   # a replay hands it to the `ready` of its own run",
            "            self._tape.calls.append(lambda stream: self.ready is not None and self.ready(name, t))",
            "",
        ]
    lines += [
        "",
        "    def __init__(self, device, interpret=None, configs=None, autotune=False,",
        "                 tune_cache='~/.cache/dln/autotune'):",
        '        """`configs`: per-kernel launch configurations overriding the defaults (e.g. CONFIGS under the',
        "        interpreter); `autotune`: on a GPU, let triton.autotune pick among AUTOTUNE's candidates (a",
        "        function with triton.autotune's signature tunes through it, under the interpreter too: tests);",
        "        `tune_cache`: the directory keeping the choices (None: keep none).\"\"\"",
        "        self.device = torch.device(device)",
        "        self.interpret = (os.environ.get('TRITON_INTERPRET') == '1') if interpret is None else interpret",
        "        self.configs = configs",
        "        self.kernels = {name: globals()[name] for name in KINDS}",
        "        self.tuned = set()",
        "        if callable(autotune) or (autotune and not self.interpret):",
        "            cuda = self.device.type == 'cuda'",
        "            device_name = torch.cuda.get_device_name(self.device) if cuda else self.device.type",
        "            for name, candidates in AUTOTUNE.items():",
        "                cache = os.path.join(os.path.expanduser(tune_cache), TUNING[name]['cache']) if tune_cache else None",
        "                self.kernels[name] = TunedKernel(globals()[name], candidates, KEYS[name], TUNING[name], cache,",
        "                                                 device_name, autotune if callable(autotune) else triton.autotune)",
        "                self.tuned.add(name)",
        "        self._slots = {}",
        "        self.generation = 0   # buffers allocated so far: what recorded their addresses is stale when it moves",
        "        self.forget()",
        "",
        "    def forget(self):",
        '        """Drop the recorded tapes: the next call of every binding runs `launch` again."""',
        "        self._tapes, self._tape, self._moved = {}, None, 0",
        "",
        "    def _slot(self, k, numel, dtype):",
        "        buf = self._slots.get(k)",
        "        if buf is None or buf.numel() < numel or buf.dtype != dtype:",
        "            buf = self._slots[k] = torch.empty(max(int(numel), 1), dtype=dtype, device=self.device)",
        "            self._tapes.clear()   # they launch on the buffer this one replaces",
        "            self.generation += 1",
        "        return buf",
        "",
        "    def _scratch(self, name, numel, dtype):",
        "        buf = self._slots.get(name)",
        "        if buf is None or buf.numel() < numel or buf.dtype != dtype:",
        "            buf = self._slots[name] = torch.empty(max(int(numel), 1), dtype=dtype, device=self.device)",
        "            self._tapes.clear()",
        "            self.generation += 1",
        "        return buf",
        "",
        "    def _zero(self, t):",
        "        t.zero_()",
        "        if self._tape is not None:",
        "            self._tape.calls.append(lambda stream: t.zero_())",
        "",
        *hand_over,
        "    def _cfg(self, name, sizes):",
        "        if name in self.tuned:",
        "            return {}",
        "        if self.configs is not None and name in self.configs:",
        "            return self.configs[name]",
        "        if self.interpret:",
        "            return _interpreter_config(KINDS[name], sizes)",
        "        return _sized_config(name, sizes)",
        "",
        "    def __call__(self, bufs, sizes):",
        '        """Runs the graph: the launches recorded for these sizes and input buffers (kernels/prebound.py),',
        '        else `launch`, recording them."""',
        "        if not self.prebound:",
        "            return self.launch(bufs, sizes)",
        "        binding = tuple(int(sizes[s]) for s in self.symbols)",
        "        key = (binding, tuple(bufs[name].data_ptr() for name in self.inputs))",
        "        tape = self._tapes.get(key)",
        "        if tape is not None:",
        "            return tape.replay()",
        "        stale = [k for k in self._tapes if k[0] == binding]   # these sizes, buffers since moved",
        "        for k in stale:",
        "            del self._tapes[k]",
        "        self._moved += bool(stale)",
        "        if self._moved > 8:   # new buffers every call (a scan body's carries): recording does not pay",
        "            self.prebound = False",
        "        tape, kernels = Tape(), self.kernels",
        "        self.kernels = {name: Recorder(kernel, tape) for name, kernel in kernels.items()}",
        "        self._tape = tape",
        "        try:",
        "            tape.outputs = self.launch(bufs, sizes)",
        "        finally:",
        "            self.kernels, self._tape = kernels, None",
        "        if len(self._tapes) >= 16:",
        "            self._tapes.clear()",
        "        self._tapes[key] = tape",
        "        return dict(tape.outputs)",
        "",
        "    def launch(self, bufs, sizes):",
        '        """The launcher: the memory plan\'s views, each kernel\'s configuration, grid and launch, in order."""',
    ]
    body: list[str] = []
    for s in symbols:
        body.append(f"s_{s} = int(sizes[{json.dumps(s)}])")
    for n in inputs:
        body.append(f"{_tensor(n.id)} = bufs[{json.dumps(n.attrs['name'])}]  # {comment(str(n.type))}")
    # Non-persistent arenas: one slot each, values as views.
    slot_base = len(mem.slots)
    for a_index, arena in enumerate(mem.arenas):
        if arena.persistent:
            names = [g.node(x).attrs["name"] for x in arena.nodes]
            body.append(f"_check_arena([{', '.join(_tensor(x) for x in arena.nodes)}], {arena.offsets})"
                        f"  # {comment(', '.join(names))}")
            continue
        var = f"arena{a_index}"
        body.append(f"{var} = self._slot({slot_base + a_index}, {arena.numel}, {TORCH_DTYPES[arena.dtype]})")
        for node, offset in zip(arena.nodes, arena.offsets):
            n = g.node(node)
            size = int(numel(n.shape))
            body.append(f"{_tensor(node)} = {var}[{offset}:{offset + size}].view({_shape(n.shape)})")
    produced: set[int] = set()
    for k, (kernel, group) in enumerate(zip(kernels, plan.groups)):
        body.append("")
        body.append(f"# {kernel.name}")
        for m in group.stores:
            if m in produced or m in mem.arena_of:
                continue
            produced.add(m)
            n = g.node(m)
            if m in mem.donated:
                body.append(f"{_tensor(m)} = {_tensor(mem.donated[m])}  # written in place")
            else:
                slot = mem.slots[mem.slot_of[m]]
                size = render_dim(numel(n.shape))
                body.append(f"{_tensor(m)} = self._slot({slot.id}, {size}, {TORCH_DTYPES[n.dtype]})[:{size}]"
                            f".view({_shape(n.shape)})")
        for z in kernel.zero_outputs:
            body.append(f"self._zero({_tensor(z)})")
        if kernel.host:   # a Python loop over launches of its inner kernels
            args = [_tensor(p.node) for p in kernel.pointers] + [f"s_{s}" for s in kernel.symbols]
            body.append(f"self.kernels[{json.dumps(kernel.name)}](self, sizes, {', '.join(args)})")
            continue
        sizes = "{" + ", ".join(f"{json.dumps(k)}: {render_dim(v)}" for k, v in kernel.sizes.items()) + "}"
        body.append(f"cfg = self._cfg({json.dumps(kernel.name)}, {sizes})")
        if kernel.wide:
            tensors = ", ".join(f"{_tensor(p.node)}.numel()" for p in kernel.pointers)
            body.append(f"cfg = dict(cfg, WIDE=max([{tensors}]) >= 2 ** 31)")  # one tensor or several
        args = [_tensor(p.node) for p in kernel.pointers] + [f"s_{s}" for s in kernel.symbols]
        if kernel.kind == "multi_tensor":
            # Each operand is its arena whole (the first tensor's view extended): what tuning saves and
            # restores around a timed run is then every parameter's, not the first one's alone.
            args = [f"{_tensor(p.node)}.as_strided(({p.shape[0]},), (1,))" if p.shape else _tensor(p.node)
                    for p in kernel.pointers] + args[len(kernel.pointers):]
        if kernel.workspace is not None:  # a kernel's own scratch (a scan's staged product operands)
            numel_, dtype_ = kernel.workspace
            args.insert(len(kernel.pointers), f"self._scratch({json.dumps(kernel.name)}, {render_dim(numel_)}, "
                                              f"{TORCH_DTYPES[dtype_]})")
        grid = "lambda meta: (" + ", ".join(kernel.grid) + ",)"
        body.append(f"self.kernels[{json.dumps(kernel.name)}][{grid}](")
        body.append("    " + ", ".join(args) + ",")
        body.append("    **cfg,")
        body.append(")")
        body += [f"self._hand_over({json.dumps(name)}, {_tensor(i)})" for name, i in handovers[k]]
    body += [f"self._hand_over({json.dumps(name)}, {_tensor(i)})" for name, i in handovers[-1]]
    body.append("")
    body.append("return {" + ", ".join(f"{json.dumps(name)}: {_tensor(i)}" for name, i in g.outputs) + "}")
    lines += ["        " + b if b else "" for b in body]
    lines += [
        "",
        "",
        "def _check_arena(tensors, offsets):",
        '    """Tensors a multi-tensor kernel walks as one must lie back to back (the runtime lays them out)."""',
        "    base = tensors[0].data_ptr()",
        "    for t, off in zip(tensors, offsets):",
        "        if t.data_ptr() != base + off * t.element_size() or not t.is_contiguous():",
        "            raise RuntimeError('multi-tensor operands are not laid out back to back')",
    ]
    return lines


def _handovers(plan: FusionPlan) -> list[list[tuple[str, int]]]:
    """The gradient outputs (`grad:...`) the launcher hands over after kernel k (k = len(groups): at the end):
    after the last kernel storing each, so that data parallelism starts their exchange while the kernels
    after it run (on a GPU: enqueued behind them on the stream, as DDP's hooks are)."""
    last = {m: k for k, group in enumerate(plan.groups) for m in group.stores}
    out: list[list[tuple[str, int]]] = [[] for _ in range(len(plan.groups) + 1)]
    for name, i in plan.graph.outputs:
        if name.startswith(GRADIENT):
            out[last.get(i, len(plan.groups))].append((name, i))
    return out


def _shape(shape) -> str:
    if not shape:
        return "()"
    return "(" + ", ".join(render_dim(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
