"""The Python API (INTERFACE.md): `dln.compile`, `Model`, `dln.train`.

    model = dln.compile("mlp.dln", backend="numpy", hidden=256)
    out = model(x=x)                                   # evaluation mode
    loss, grads = model.value_and_grad("loss", x=x, y=y)
    model.load_state_dict(torch_module.state_dict())

Arrays may be NumPy arrays or torch tensors; results come back as the kind
given.  Parameters and model state (running statistics) live in the
backend's memory; executables are prepared once per request and reused.  A
run in training mode (`value_and_grad`, `run(training=True)`) updates the
model state, as a torch module's forward in training mode does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from dln.compiler import pipeline
from dln.compiler.build import BuiltModel, InputInfo
from dln.compiler.ir import DType, Graph, Op
from dln.compiler.limits import DEFAULT_LIMITS, Limits
from dln.compiler.passes.autocast import MIXED
from dln.compiler.passes.global_rows import ROW
from dln.compiler.printer import format_graph
from dln.compiler.program import Program
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import binding, init, loading
from dln.runtime.backends import MERGES_PRODUCTS, Backend, get_backend
from dln.runtime.loading import Loaded
from dln.runtime.numpy_ops import round_bf16


class Model:
    """A compiled `.dln` model: parameters plus prepared graphs."""

    def __init__(self, program: Program, name: str | None = None, hparams: Mapping[str, Any] | None = None,
                 backend: str | None = None, seed: int = 0, from_text: bool = False, debug: bool = False,
                 precision: str | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.program = program
        _check_arg("model", name, (str, type(None)), "a model's name")
        _check_flag("debug", debug)
        _check_seed(seed)
        self.debug = bool(debug)
        self.hparams_given = plain_values(hparams or {})
        self.from_text = from_text
        self.limits = limits
        self.spec: BuiltModel = pipeline.build_model(program, name, self.hparams_given, training=False,
                                                     from_text=from_text, limits=limits)
        self.name = self.spec.name
        # A mixed mode changes the graphs (dln.compiler.passes.autocast), on every backend; the others say
        # how the Triton backend's products use tensor cores.
        self.precision = precision
        self.mixed = MIXED.get(precision) if precision is not None else None
        self.backend: Backend = get_backend(backend, precision)
        seed = int(seed)
        rng = np.random.default_rng(seed)
        self._params: dict[str, Any] = init.draw_all(self.spec.params, rng, self.backend.asarray)
        self._state: dict[str, Any] = init.draw_all(self.spec.state, rng, self.backend.asarray)
        self._round_bf16(self._params)
        self._train_spec: BuiltModel | None = None
        # Training as one rank of several with `sync_batchnorm`: batch norm's statistics across ranks (set by
        # dln.runtime.train before the training graphs are built).
        self.sync_batchnorm = False
        self._prepared: dict[tuple, tuple[Graph, Any]] = {}
        self._rng_seed = seed
        self._rng_step = 0
        self._step_rng: dict[str, Any] | None = None   # the random state of training steps (step_rng)
        # A character model's vocabulary (token id -> character): set by training on text, read from
        # the weights file that recorded it; saved in the weights' metadata (dln.runtime.text).
        self.vocab: list[str] | None = None
        self._stream = None   # the stream build that generation runs (dln.runtime.sample)

    # ---- what the compiler made ------------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.spec.hparams)

    @property
    def train_spec(self) -> BuiltModel:
        if self._train_spec is None:
            self._train_spec = pipeline.build_model(self.program, self.name, self.hparams_given, training=True,
                                                    from_text=self.from_text, limits=self.limits,
                                                    sync_batchnorm=self.sync_batchnorm)
        return self._train_spec

    @property
    def inputs(self) -> dict[str, InputInfo]:
        return {i.name: i for i in self.spec.inputs}

    @property
    def outputs(self) -> list[str]:
        return self.spec.outputs

    @property
    def ir(self) -> str:
        """The forward graph of the declared outputs, as text."""
        return format_graph(pipeline.forward_graph(self.spec, mixed=self.mixed))

    @property
    def backward_ir(self) -> str:
        """The training step (forward, backward, optimizer update) of the file's train section, as text."""
        from dln.runtime.train import default_objective

        step = pipeline.train_step(self.train_spec, default_objective(self), mixed=self.mixed)
        return format_graph(step.graph)

    @property
    def kernels(self) -> str:
        """The generated Triton kernels of the training step, as Python source."""
        from dln.kernels.module import generate_module
        from dln.runtime.train import default_objective

        step = pipeline.train_step(self.train_spec, default_objective(self), mixed=self.mixed)
        return generate_module(step.graph).source

    # ---- parameters -------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        return {k: self.backend.to_numpy(v).copy() for k, v in self._params.items()}

    def buffers(self) -> dict[str, np.ndarray]:
        """The model state (running statistics): {name: array}."""
        return {k: self.backend.to_numpy(v).copy() for k, v in self._state.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and model state, by PyTorch's names."""
        return {**self.parameters(), **self.buffers()}

    @property
    def persistent(self) -> dict[str, Any]:
        """The backend's buffers a run reads (and updates, by donation): parameters and model state."""
        return {**self._params, **self._state}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True,
                        map: Mapping[str, str] | None = None) -> Loaded:
        """Copy values in by name; a PyTorch state_dict of the same architecture loads.

        As torch's `load_state_dict` does, values are cast to each parameter's element type (bfloat16
        and float16 weights load into float32 parameters); complex, string and object arrays are
        refused, and so is any mismatch, before anything is written.  `strict=False` loads what the
        model has and reports the rest (the model's names the state lacks keep their values); a
        shape that differs under the same name is still an error, as in torch.  `map` renames the
        state's names first, by prefix, old to new (`{"backbone.": "features."}`; dln.runtime.loading).
        Returns what was loaded, missing and unexpected."""
        _check_flag("strict", strict)
        where = self.spec.decl.name.span
        prefixes = loading.check_map(map, where)
        if not isinstance(state, Mapping):
            raise DlnError(Diagnostic("E0703", f"load_state_dict of model {self.name} takes a mapping from parameter "
                                               f"names to arrays, got {_kind(state)}", where))
        named = {k: v for k, v in state.items() if isinstance(k, str)}
        problems = [f"the name {k!r} is not a string" for k in state if not isinstance(k, str)]
        names = loading.rename(list(named), prefixes, where) if prefixes else {k: k for k in named}
        arrays = {}
        for k, v in named.items():
            try:
                arrays[names[k]] = binding.to_numpy(v)
            except binding.NotAnArray as e:
                problems.append(f"{k} {e}")
                continue
            if not binding.real_dtype(arrays[names[k]]):
                problems.append(f"{k} is an array of {arrays[names[k]].dtype}, not of numbers")
        slots = self.persistent
        missing = [k for k in slots if k not in names.values()]
        unexpected = [k for k in names.values() if k not in slots]
        if strict and missing:
            problems.append(f"missing: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected: {', '.join(unexpected)}")
        for k, v in arrays.items():
            if k in slots:
                want = tuple(self.backend.to_numpy(slots[k]).shape)
                if tuple(v.shape) != want:
                    problems.append(f"{k} has shape {tuple(v.shape)}, the model's is {want}")
        if problems:
            hint = (Note("load what matches with --non-strict (Python: strict=False); rename the weights' names "
                         "with --map OLD=NEW (map={...})"),) if strict and (missing or unexpected) else ()
            raise DlnError(Diagnostic("E0703", f"the weights do not match model {self.name}: " + "; ".join(problems),
                                      where, hint))
        loaded = [k for k in slots if k in arrays]
        for k in loaded:
            self.backend.copy_into(slots[k], arrays[k])
        self._round_bf16({k: slots[k] for k in loaded})
        return Loaded(loaded, missing, unexpected)

    def _round_bf16(self, buffers: Mapping[str, Any]) -> None:
        """bf16 parameters and state hold bf16 values: NumPy keeps them in float32 arrays (numpy_ops),
        which a draw or a load fills with float32 values; rounded here, as torch's `.bfloat16()` rounds."""
        bf16 = {i.name for i in [*self.spec.params, *self.spec.state] if i.type.dtype is DType.BF16}
        for name, buf in buffers.items():
            if name in bf16 and isinstance(buf, np.ndarray):
                round_bf16(buf)

    def copy_from(self, other: "Model", tau: float | None = None) -> None:
        """The weights of `other`, a model of the same program (a DQN's target network from its online
        one), copied buffer to buffer in the backend's memory.  With `tau`, Polyak averaging: each
        parameter becomes `tau * other + (1 - tau) * self`; the model state (running statistics) is copied."""
        _check_arg("other", other, Model, "a model made by dln.compile")
        if tau is not None:
            ok = isinstance(tau, (int, float, np.integer, np.floating)) and not isinstance(tau, (bool, np.bool_))
            if not ok or not 0 <= tau <= 1:
                raise DlnError(Diagnostic("E0710", f"argument tau must be a number in [0, 1], got {_kind(tau)}"))
        if other.backend.name != self.backend.name:
            raise DlnError(Diagnostic("E0710", f"copy_from needs two models on one backend: this one runs on "
                                               f"{self.backend.name}, the other on {other.backend.name}"))
        mine, theirs = self.persistent, other.persistent
        problems = [f"missing: {k}" for k in theirs if k not in mine] + \
                   [f"unexpected: {k}" for k in mine if k not in theirs]
        for k in mine.keys() & theirs.keys():
            a, b = tuple(mine[k].shape), tuple(theirs[k].shape)
            if a != b or mine[k].dtype != theirs[k].dtype:
                problems.append(f"{k} is {theirs[k].dtype}{list(b)} there, {mine[k].dtype}{list(a)} here")
        if problems:
            raise DlnError(Diagnostic("E0703", f"the weights of model {other.name} do not match model {self.name}: "
                                               + "; ".join(sorted(problems)), self.spec.decl.name.span))
        for k, v in mine.items():
            self.backend.assign(v, theirs[k], tau if k in self._params else None)

    def step_rng(self) -> dict[str, Any]:
        """The random state the training steps of this model's optimizers read and advance in place
        (`rng.seed`, `rng.step`): one for all of them, so that two objectives draw different numbers."""
        if self._step_rng is None:
            self._step_rng = {"rng.seed": self.backend.asarray(np.array(self._rng_seed, np.int64)),
                              "rng.step": self.backend.asarray(np.array(0, np.int64))}
        return self._step_rng

    def save(self, path: str | Path) -> None:
        """The parameters and model state as a safetensors file (the model's name in its metadata)."""
        from dln.runtime.checkpoint import save_arrays

        path = _check_path("save", path)
        if path.is_dir():
            raise DlnError(Diagnostic("E0702", f"cannot write weights to {path}: it is a directory",
                                      None, (Note("name a file: model.save(\"weights.safetensors\")"),)))
        try:
            save_arrays(path, self.state_dict(), self.metadata())
        except OSError as e:  # permissions, a file where a directory should be, a full disk
            raise DlnError(Diagnostic("E0702", f"cannot write weights to {path}: {e.strerror or e}")) from None

    def metadata(self) -> dict[str, str]:
        """What a weights file records beside the arrays: the model's name, and a character model's
        vocabulary (a JSON list of characters)."""
        from dln.runtime.text import vocab_metadata

        return {"model": self.name, **({"vocab": vocab_metadata(self.vocab)} if self.vocab else {})}

    def load(self, path: str | Path, strict: bool = True, map: Mapping[str, str] | None = None) -> Loaded:
        """Parameters and model state from a safetensors file (as `save` writes, or a PyTorch state dict
        saved with safetensors), and the vocabulary it records, if any; `strict` and `map` as for
        `load_state_dict`.  Returns what was loaded, missing and unexpected."""
        from dln.runtime.checkpoint import load_arrays

        path = _check_path("load", path)
        if path.is_dir():
            raise DlnError(Diagnostic("E0702", f"cannot read weights from {path}: it is a directory"))
        arrays = load_arrays(path)
        try:
            loaded = self.load_state_dict(arrays, strict, map)
        except DlnError as e:
            saved_by = _saved_model(path)
            if saved_by is None or saved_by == self.name:
                raise
            d = e.diagnostics[0]
            raise DlnError(Diagnostic(d.code, d.message, d.span,
                                      d.notes + (Note(f"{path} holds the weights of model {saved_by}"),))) from None
        vocab = _saved_vocab(path)
        if vocab is not None:
            self.vocab = vocab
        return loaded

    # ---- running ----------------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **inputs: Any) -> dict[str, Any]:
        """The declared outputs, in evaluation mode."""
        self._by_name(args, "model(")
        return self.run(None, **inputs)

    def _by_name(self, args: tuple, call: str) -> None:
        """Inputs are given by name; a positional array is a mistake worth a diagnostic (`call`: how
        the right call begins)."""
        if args:
            names = ", ".join(f"{i.name}=..." for i in self.spec.inputs)
            raise DlnError(Diagnostic("E0701", f"model {self.name} takes its inputs by name, got {len(args)} "
                                               "positional argument(s)", self.spec.decl.name.span,
                                      (Note(f"call it as {call}{names})"),)))

    def run(self, outputs: str | Iterable[str] | None = None, training: bool = False, **inputs: Any) -> dict[str, Any]:
        """Any named values of the model (declared outputs by default; one name or several)."""
        _check_flag("training", training)
        spec = self.train_spec if training else self.spec
        graph, prepared = self._forward(spec, outputs, training)
        results = self._execute(spec, graph, prepared, inputs)
        return _as_kind(results, inputs)

    def _run_rows(self, outputs: Iterable[str], row: int, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """`run` in evaluation mode as one rank of several (dln.runtime.batches): the draws over the batch
        counted from row `row` of the global batch (`rng.row`), so that this rank's rows get the numbers one
        process draws for them there.  `inputs` None: this rank has no rows of the batch; its draw counter
        advances all the same, as every rank's does once per global batch."""
        graph, prepared = self._forward(self.spec, outputs, False, rows=True)
        if inputs is None:
            if graph.input_named("rng.seed") is not None:
                self._rng_step += 1
            return {}
        return self._execute(self.spec, graph, prepared, inputs, row)

    def _forward(self, spec: BuiltModel, outputs: str | Iterable[str] | None, training: bool,
                 rows: bool = False) -> tuple[Graph, Any]:
        """The forward graph of `outputs` and its prepared executable, made once per request; `rows`: with
        draws counted from a global row (pipeline.forward_graph)."""
        names = _names(outputs) if outputs is not None else tuple(spec.outputs)
        for n in names:
            if n not in spec.values and n not in spec.graph.output_names and n not in spec.metrics:
                raise DlnError(Diagnostic("E0602", f"model {self.name} has no value '{n}'", spec.decl.name.span))
        key = ("run", training, names, rows)
        if key not in self._prepared:
            graph = pipeline.forward_graph(spec, names, self.debug, self.mixed,
                                           merge=MERGES_PRODUCTS[self.backend.name], rows=rows)
            self._prepared[key] = (graph, self.backend.prepare(graph, self.persistent, spec.state_donations()))
        return self._prepared[key]

    def value_and_grad(self, loss: str = "loss", *args: Any, **inputs: Any) -> tuple[Any, dict[str, Any]]:
        """The value of scalar `loss` and its gradient for every parameter, in training mode."""
        self._by_name(args, 'model.value_and_grad("loss", ')
        _check_arg("loss", loss, str, "the name of a scalar value")
        spec = self.train_spec
        if loss not in spec.values:
            raise DlnError(Diagnostic("E0602", f"model {self.name} has no value '{loss}'", spec.decl.name.span))
        key = ("grad", loss)
        if key not in self._prepared:
            graph = pipeline.gradient_graph(spec, loss, self.debug, self.mixed,
                                            merge=MERGES_PRODUCTS[self.backend.name])
            self._prepared[key] = (graph, self.backend.prepare(graph, self.persistent, spec.state_donations()))
        graph, prepared = self._prepared[key]
        results = self._execute(spec, graph, prepared, inputs)
        grads = {}
        for p in spec.params:
            g = results.get(f"grad:{p.name}")
            grads[p.name] = g if g is not None else np.zeros(tuple(int(d) for d in p.type.shape),
                                                             dtype=np.asarray(self.parameters()[p.name]).dtype)
        value = results["loss"]
        converted = _as_kind({"loss": value, **grads}, inputs)
        return converted.pop("loss"), converted

    def _execute(self, spec: BuiltModel, graph: Graph, prepared: Any, inputs: Mapping[str, Any],
                 row: int | None = None) -> dict[str, Any]:
        feeds, env = self.feeds(spec, graph, inputs, row)
        if "rng.seed" in feeds:
            self._rng_step += 1
        out = prepared.run(feeds, env)
        updates = spec.state_donations()   # written over the model state by the run: not results
        return {k: self.backend.to_numpy(v).copy() for k, v in out.items() if k not in updates}

    def feeds(self, spec: BuiltModel, graph: Graph, inputs: Mapping[str, Any],
              row: int | None = None) -> tuple[dict[str, Any], dict]:
        """Check `inputs` against the graph's needs; the arrays to feed and the symbol values (and `row`, the
        global row a graph made with `rows` counts its draws from)."""
        infos = {i.name: i for i in spec.inputs}
        for name in inputs:
            if name not in infos:
                close = ", ".join(infos) or "none"
                raise DlnError(Diagnostic("E0701", f"model {self.name} has no input '{name}'", spec.decl.name.span,
                                          (Note(f"inputs: {close}"),)))
        needed = [n.attrs["name"] for n in graph.nodes if n.op is Op.INPUT and n.attrs["role"] == "input"]
        symbols = graph.symbols()
        for info in spec.inputs:  # inputs that only give a dimension the graph uses are needed too
            if info.name not in needed and any(str(d) in symbols for d in info.type.shape):
                if info.name in inputs:
                    needed.append(info.name)
        for name in needed:
            if name not in inputs:
                raise DlnError(Diagnostic("E0701", f"missing input '{name}'", infos[name].span))
        arrays = {name: binding.convert(infos[name], inputs[name]) for name in needed}
        env = binding.bind([infos[n] for n in needed], arrays, graph.constraints)
        unknown = symbols - env.keys()
        if unknown:
            givers = [i.name for i in spec.inputs if any(str(d) in unknown for d in i.type.shape)]
            raise DlnError(Diagnostic("E0701", f"dimension {', '.join(sorted(unknown))} is unknown: pass input "
                                               f"{' or '.join(repr(g) for g in givers) or '?'}",
                                      spec.decl.name.span))
        feeds: dict[str, Any] = dict(arrays)
        if graph.input_named("rng.seed") is not None:
            feeds["rng.seed"] = np.array(self._rng_seed, np.int64)
            feeds["rng.step"] = np.array(self._rng_step, np.int64)
        if row is not None and graph.input_named(ROW) is not None:
            feeds[ROW] = np.array(row, np.int64)
        return feeds, env

    # ---- generation -------------------------------------------------------------------------------------------
    def sample(self, prompt: str, tokens: int, temperature: float = 1.0, seed: int = 0, window: int | None = None,
               vocab: str | Iterable[str] | None = None) -> str:
        """`tokens` characters generated after `prompt` by a character-level language model (an input of
        token ids [B, T], an output of logits [B, T, vocab]).  Recurrent layers carry their state from
        token to token; a model without them re-runs the last `window` characters for each (by default
        the window its train section's `dataset("text")` trains on, else all).  `temperature` 0 picks
        the likeliest character; otherwise a draw from softmax(logits / temperature), reproducible for a
        `seed`.  `vocab`: the characters of ids 0, 1,
        ... (default: the vocabulary the weights record, else the train section's text data set's)."""
        return "".join(self._generate(prompt, tokens, temperature, seed, window, vocab))

    def _generate(self, prompt: Any, tokens: Any, temperature: Any = 1.0, seed: Any = 0, window: Any = None,
                  vocab: Any = None) -> Iterator[str]:
        """`sample`, a character at a time, with its arguments checked before the first."""
        from dln.runtime import sample

        _check_arg("prompt", prompt, str, "a string")
        if not prompt:
            raise DlnError(Diagnostic("E0710", "argument prompt must hold at least one character: generation "
                                               "continues a text"))
        _check_count("tokens", tokens, 0)
        ok = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, bool)
        if not ok or not (0 <= float(temperature) < float("inf")):
            raise DlnError(Diagnostic("E0710", f"argument temperature must be a number >= 0 (0: the likeliest "
                                               f"character), got {_kind(temperature)}"))
        _check_seed(seed)
        if window is not None:
            _check_count("window", window, 1)
        if self._stream is None:
            self._stream = sample.stream_of(self)
        if vocab is not None:
            chars = list(vocab) if isinstance(vocab, (str, list, tuple)) else None
            if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars):
                raise DlnError(Diagnostic("E0710", f"argument vocab must be a string or list of distinct characters, "
                                                   f"got {_kind(vocab)}"))
        else:
            chars = sample.vocab_of(self)
        sample.check_vocab(self._stream, chars)
        sample.check_prompt(prompt, chars)
        return sample.generate(self, self._stream, chars, prompt, int(tokens), float(temperature), int(seed),
                               window if window is None else int(window))

    def export_onnx(self, path: str | Path | None, opset: int = 18):
        """The forward graph in evaluation mode as an ONNX model (onnx.ModelProto), written to `path`
        unless it is None: dynamic batch (and sequence) axes, the weights as initializers under their
        state_dict names, checked by onnx.checker and strict shape inference (docs/onnx_export.md)."""
        from dln.runtime.onnx.export import export_onnx

        if path is not None:
            path = _check_path("export_onnx", path)
        return export_onnx(self, path, opset)

    def as_torch(self):
        """A torch.nn.Module whose forward and backward run the compiled graphs."""
        from dln.runtime.torch_module import as_torch

        return as_torch(self)


def _as_kind(results: dict[str, np.ndarray], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Results as torch tensors when any input was one, else as NumPy arrays."""
    if any(type(v).__module__.startswith("torch") for v in inputs.values()):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in results.items()}
    return results


def compile(source: str | Path, backend: str | None = None, model: str | None = None, seed: int = 0,
            debug: bool = False, precision: str | None = None, max_nodes: int = DEFAULT_LIMITS.max_nodes,
            max_unroll: int = DEFAULT_LIMITS.max_unroll, **hparams: Any) -> Model:
    """Compile a `.dln` file (a path) or source text; keyword arguments override hyperparameters
    (NumPy scalars such as `np.int64(8)` count as the Python numbers they hold).

    `backend`: "numpy" or "triton" (default: triton with a CUDA GPU, else numpy).  `precision`:
    "bf16-mixed" or "16-mixed", mixed precision on every backend (torch.autocast: products in bf16 or
    f16 from float32 master weights; "16-mixed" training scales the loss as torch.amp.GradScaler); or,
    for Triton's float32 products, "ieee" (exact, the default), "tf32", "tf32x3", "bf16x3".
    `max_nodes`, `max_unroll`: bounds on the model's forward graph and its `repeat` iterations
    (dln.compiler.limits); a program past them is an error E0312 rather than a compile without end."""
    _check_source(source)
    _check_arg("backend", backend, (str, type(None)), '"numpy" or "triton"')
    _check_arg("precision", precision, (str, type(None)), 'a precision name such as "ieee"')
    _check_limits(max_nodes, max_unroll)
    program = pipeline.load(source)
    return Model(program, model, hparams, backend, seed=seed, debug=debug, precision=precision,
                 limits=Limits(max_nodes, max_unroll))


def train(source: str | Path, backend: str | None = None, max_nodes: int = DEFAULT_LIMITS.max_nodes,
          max_unroll: int = DEFAULT_LIMITS.max_unroll, **overrides: Any):
    """Train as the file's train section says; keyword arguments override settings
    (epochs, batch, seed, checkpoint, ...) and hyperparameters (anything else).  `weights` starts
    from a weights file, loaded with `strict` and `map` as `Model.load` does; `over` (a parameter-name
    pattern or a list of them) replaces every objective's `over`.  `max_nodes`, `max_unroll`: as for
    `compile`.  Metrics and pictures go to `logdir=` (a directory), else to the checkpoint directory;
    `logdir=True` adds `dln train`'s default, runs/<file stem>."""
    from dln.runtime.train import train_file

    _check_source(source)
    _check_arg("backend", backend, (str, type(None)), '"numpy" or "triton"')
    overrides = plain_values(overrides)
    for name, types, wanted in _TRAIN_ARGS:
        if overrides.get(name) is not None:
            _check_arg(name, overrides[name], types, wanted)
    if overrides.get("log") is not None and not callable(overrides["log"]):
        raise DlnError(Diagnostic("E0710", f"argument log must be a function of one string, got "
                                           f"{_kind(overrides['log'])}"))
    _check_limits(max_nodes, max_unroll)
    return train_file(source, backend=backend, limits=Limits(max_nodes, max_unroll), **overrides)


# dln.train's own keyword arguments (the rest are train settings, checked by the recipe, and
# hyperparameters, checked by the compiler).
_TRAIN_ARGS = (("model", str, "a model's name"), ("weights", (str, os.PathLike), "a weights file's path"),
               ("precision", str, 'a precision name such as "ieee"'), ("progress", bool, "True or False"),
               ("debug", bool, "True or False"), ("from_text", bool, "True or False"),
               ("logdir", (str, os.PathLike, bool), "a directory's path, True or False"),
               ("strict", (bool, np.bool_), "True or False"))


# ---- checking what the caller passed --------------------------------------------------------------------------------
# Mistakes in a call's arguments are E0710 diagnostics naming the argument; mistakes about the
# model (inputs E0701, weights E0703, hyperparameters E0401) keep their own codes.

def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """NumPy scalars (`np.int64(8)`, `np.float32(0.5)`, `np.bool_(True)`) as the Python values they hold."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


def _kind(value: Any) -> str:
    """A value as an error message shows it: `-1 (int)`, `[1, 2, 3] (list)`."""
    return "None" if value is None else f"{value!r:.40} ({type(value).__name__})"


def _check_limits(max_nodes: Any, max_unroll: Any) -> None:
    for name, value in (("max_nodes", max_nodes), ("max_unroll", max_unroll)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DlnError(Diagnostic("E0710", f"argument {name} must be a positive int, got {_kind(value)}"))


def _check_arg(name: str, value: Any, types: type | tuple[type, ...], wanted: str) -> None:
    if not isinstance(value, types):
        raise DlnError(Diagnostic("E0710", f"argument {name} must be {wanted}, got {_kind(value)}"))


def _check_flag(name: str, value: Any) -> None:
    _check_arg(name, value, (bool, np.bool_), "True or False")


def _check_seed(seed: Any) -> None:
    """Seeds are what NumPy's generators and the Philox counter (64 bits, signed on the way) take."""
    ok = isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)) and 0 <= seed < 2 ** 63
    if not ok:
        raise DlnError(Diagnostic("E0710", f"argument seed must be an int from 0 to 2**63 - 1, got {_kind(seed)}"))


def _check_source(source: Any) -> None:
    if not isinstance(source, (str, os.PathLike)):
        hint = (Note("decode bytes first: source.decode()"),) if isinstance(source, bytes) else ()
        raise DlnError(Diagnostic("E0710", f"argument source must be a path or the text of a .dln file, got "
                                           f"{_kind(source)}", None, hint))


def _check_path(what: str, path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DlnError(Diagnostic("E0710", f"{what} takes a file path, got {_kind(path)}"))
    return Path(path)


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise DlnError(Diagnostic("E0710", f"argument {name} must be an int >= {low}, got {_kind(value)}"))


def _names(outputs: Any) -> tuple[str, ...]:
    """`run`'s outputs: one name, or a list or tuple of names."""
    if isinstance(outputs, str):
        return (outputs,)
    if isinstance(outputs, (list, tuple)) and all(isinstance(n, str) for n in outputs):
        return tuple(outputs)
    raise DlnError(Diagnostic("E0710", f"argument outputs must be a value's name or a list of names, got "
                                       f"{_kind(outputs)}"))


def _saved_model(path: Path) -> str | None:
    """The model a weights file says it holds (`save` writes it in the safetensors metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            return (f.metadata() or {}).get("model")
    except Exception:  # unreadable metadata only loses the note
        return None


def _saved_vocab(path: Path) -> list[str] | None:
    """The vocabulary a weights file records (a character model's), if any."""
    from safetensors import safe_open

    from dln.runtime.text import vocab_from_metadata

    try:
        with safe_open(str(path), "np") as f:
            value = (f.metadata() or {}).get("vocab")
    except Exception:  # the arrays loaded: metadata that cannot be read records nothing
        return None
    return vocab_from_metadata(value) if value is not None else None
