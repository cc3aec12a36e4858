"""The `dln` command (INTERFACE.md).

Exit status: 0 success, 1 an error in the user's program or data, 2 wrong
usage.  Errors are printed as diagnostics; a Python traceback appears only
with --debug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dln.compiler.limits import DEFAULT_LIMITS, Limits
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, dedupe, render_all
from dln.kernels.precision import MODES

if TYPE_CHECKING:
    from dln.compiler.ir import Graph


def _sets(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _number(convert: Callable[[str], Any], holds: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: `convert(text)` when it succeeds and `holds`, else "expected <what>"."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not holds(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive = _number(int, lambda v: v >= 1, "a positive integer")
_count = _number(int, lambda v: 0 <= v < 2 ** 63, "a non-negative integer")
_temperature = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def _limits(args) -> Limits:
    return Limits(args.max_nodes, args.max_unroll)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dln", description="A declarative language for neural networks.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks and check the IR between passes")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, backend: bool = False, sets: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("file", help="the .dln file")
        c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if sets:
            c.add_argument("--set", action="append", default=[], metavar="K=V", help="override a hyperparameter")
            c.add_argument("--model", help="which model of the file (default: the only one, the trained one, or "
                                           "the one no other model uses)")
            c.add_argument("--max-nodes", type=_positive, default=DEFAULT_LIMITS.max_nodes, metavar="N",
                           help=f"stop when a model's graph grows past N nodes (default {DEFAULT_LIMITS.max_nodes:,})")
            c.add_argument("--max-unroll", type=_positive, default=DEFAULT_LIMITS.max_unroll, metavar="N",
                           help=f"stop when a model's repeat loops unroll more than N times in all (default "
                                f"{DEFAULT_LIMITS.max_unroll:,})")
        if backend:
            c.add_argument("--backend", choices=["numpy", "triton"], help="default: triton with a GPU, else numpy")
            c.add_argument("--precision", choices=MODES,
                           help="bf16-mixed or 16-mixed: mixed precision on any backend (as torch.autocast, "
                                "16-mixed training with loss scaling), overriding the train section's; or "
                                "Triton's float32 products: exact (ieee, default) or tensor-core modes")
        return c

    command("check", "parse, resolve and infer shapes; print errors or a summary")
    command("params", "list every parameter: name, shape, initializer, count")
    c = command("compile", "write the compiled artefacts (IR, plan, kernels, manifest) to a directory", backend=True)
    c.add_argument("-o", "--output", required=True, help="output directory")
    c.add_argument("--target", choices=["sm_80", "sm_90"], help="also compile every kernel for this GPU")
    c.add_argument("--batch", type=_positive, default=128,
                   help="the batch the kernels are planned and modeled for with --target (default 128)")
    c = command("run", "one forward pass", backend=True)
    c.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input array")
    c.add_argument("--weights", help="a .safetensors file of weights")
    _loading_options(c)
    c.add_argument("-o", "--output", help="write the outputs to this file (NumPy .npz, under exactly this name)")
    c = command("train", "train as the file's train section says", backend=True)
    c.add_argument("--weights", help="start from these weights (.safetensors)")
    _loading_options(c)
    c.add_argument("--over", action="append", metavar="PATTERN",
                   help="train only the parameters this name pattern matches (\"head.*\"; repeatable), as "
                        "minimize ... over does")
    c.add_argument("--epochs", type=int)
    c.add_argument("--batch", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--checkpoint", help="checkpoint directory (resumes from it)")
    c.add_argument("--logdir", metavar="DIR",
                   help="where metrics (metrics.csv, TensorBoard events) and pictures go (default: the checkpoint "
                        "directory, else runs/<file name>; 'none': nowhere)")
    c.add_argument("--save", help="write the final weights to this .safetensors file")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--check-numerics", action="store_true",
                   help="when a step makes a NaN or an infinity, name the op that made it (slower)")
    c.add_argument("--nproc", type=_positive, metavar="N",
                   help="data-parallel training in N local processes, --batch rows each (as torchrun "
                        "--nproc-per-node N -m dln train FILE does)")
    c.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="among ranks, batch norm's statistics over every rank's rows (as torch.nn.SyncBatchNorm), "
                        "or each rank's own (--no-sync-batchnorm), overriding the train section's sync_batchnorm")
    c = command("eval", "metrics on the validation data", backend=True)
    c.add_argument("--weights", required=True, help="a .safetensors file of weights")
    _loading_options(c)
    c = command("sample", "generate text with a character-level language model", backend=True)
    c.add_argument("--weights", required=True, help="a .safetensors file of weights (it records the vocabulary)")
    _loading_options(c)
    c.add_argument("--prompt", required=True, help="the text to continue")
    c.add_argument("--tokens", type=_count, default=200, metavar="N", help="how many characters (default 200)")
    c.add_argument("--temperature", type=_temperature, default=1.0, metavar="T",
                   help="0: always the likeliest character; higher: more varied (default 1)")
    c.add_argument("--seed", type=_count, default=0, help="the seed of the draws (default 0)")
    c.add_argument("--window", type=_positive, metavar="N",
                   help="a model without recurrent layers re-reads the last N characters (default: the window its "
                        "dataset(\"text\") trains on, else all)")
    c = command("graph", "the graph as DOT text (kernels as boxes with --backend triton)", backend=True)
    c.add_argument("-o", "--output", help="write DOT; SVG when the name ends in .svg (with Graphviz's dot program)")
    c = command("bench", "kernels per training step and modeled memory traffic, against PyTorch", backend=True)
    c.add_argument("--batch", type=int, default=128)
    c.add_argument("--gpu", choices=["a100", "h100"],
                   help="print the modeled step on this GPU (dln's kernels against PyTorch eager's); needs no GPU")
    c = command("export", "write the forward graph (evaluation mode) as an ONNX model")
    c.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    c.add_argument("--opset", type=_positive, default=18, metavar="N", help="the ONNX opset (default 18)")
    c.add_argument("--weights", help="export these weights (.safetensors) rather than freshly drawn ones")
    _loading_options(c)
    c = sub.add_parser("import", help="an ONNX model as .dln source text, its weights as safetensors beside it",
                       description="an ONNX model as .dln source text (-o), its weights as safetensors beside it "
                                   "(model.dln -> model.safetensors)")
    c.add_argument("file", metavar="MODEL.onnx", help="the ONNX model")
    c.add_argument("-o", "--output", required=True, metavar="MODEL.dln", help="the .dln file to write")
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    c = sub.add_parser("plot", help="loss and accuracy curves of a run directory as a PNG",
                       description="loss and accuracy curves of a run directory (its metrics.csv) as a PNG")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of dln train")
    c.add_argument("-o", "--output", help="the PNG to write (default: RUN_DIR/curves.png)")
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _loading_options(c: argparse.ArgumentParser) -> None:
    """How --weights loads into a model whose names or head differ (transfer learning)."""
    c.add_argument("--non-strict", action="store_true",
                   help="load the weights' arrays the model has; report the missing and unexpected names")
    c.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="rename the weights' names by prefix before loading (backbone.=features.); repeatable")


def _load_weights(model, args) -> None:
    """--weights into `model`; with --non-strict or --map, say what loaded, so a typo shows."""
    loaded = model.load(args.weights, strict=not args.non_strict, map=args.prefix_map)
    if args.non_strict or args.prefix_map:
        print(loaded.summary(args.weights), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from dln.runtime.loading import parse_map

    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]   # what --nproc's workers are started with
    try:
        args.hparams = _sets(getattr(args, "set", []))
        args.prefix_map = parse_map(getattr(args, "map", []))
    except (argparse.ArgumentTypeError, ValueError) as e:
        parser.error(str(e))
    if (args.prefix_map or getattr(args, "non_strict", False)) and not getattr(args, "weights", None):
        parser.error("--non-strict and --map say how to load --weights, which is not given")
    try:
        return COMMANDS[args.command](args)
    except DlnError as e:
        print(render_all(e.diagnostics), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`dln train ... | head`): stop quietly, as a Unix tool does. Python would
        # complain again flushing stdout at exit, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except RecursionError:
        if args.debug:
            raise
        print(render_all([Diagnostic("E0313", "the program nests too deeply to compile")]), file=sys.stderr)
        return 1
    except Exception as e:  # an internal error: say so, without a traceback
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {e}\n(run with --debug for the traceback, and please report "
              "it)", file=sys.stderr)
        return 1


# ---- commands -------------------------------------------------------------------------------------------------

def _load(args):
    from dln.compiler import pipeline

    return pipeline.load(Path(args.file))  # FILE is always a path, never program text


def _model_name(args, program) -> str | None:
    """The model a command is about: --model, else the trained one when the file has several."""
    name = args.model
    if name is None and program.root.trains and program.root.trains[0].model is not None and \
            len(program.root.models) > 1:
        name = program.root.trains[0].model.name
    return name


def _model(args, backend: str | None = "numpy"):
    from dln.runtime.api import Model

    program = _load(args)
    return Model(program, _model_name(args, program), args.hparams, backend, from_text=True, debug=args.debug,
                 precision=getattr(args, "precision", None), limits=_limits(args))


def cmd_check(args) -> int:
    """Everything the compiler can find without running: every model of the file and every
    train section.  No parameter is allocated: sizes are counted from the shapes."""
    began = time.perf_counter()
    lines, _ = check_program(_load(args), args.model, args.hparams, args.debug, _limits(args))
    for line in lines:
        print(line)
    if args.debug:
        print(f"checked in {time.perf_counter() - began:.3f}s", file=sys.stderr)
    return 0


def check_program(program, model: str | None = None, hparams: dict[str, str] | None = None,
                  debug: bool = False, limits: Limits = DEFAULT_LIMITS
                  ) -> tuple[list[str], list[tuple[Graph, dict[str, str]]]]:
    """What `dln check` does after loading: the summary lines, and the graphs it built (each
    forward graph, and each training step with the inputs its outputs replace) for callers
    that go further (the fuzzer plans their kernels).  Raises `DlnError` with every error."""
    from dln.compiler import pipeline
    from dln.compiler.cost import total_flops
    from dln.compiler.recipe import model_of, recipe_of
    from dln.compiler.symbolic import numel

    hparams = hparams or {}
    names = [model] if model else [m.name.name for m in program.root.models]
    if not names and not program.root.trains:
        raise DlnError(Diagnostic("E0301", f"{program.path} declares no model"))

    def hparams_of(name: str) -> dict[str, str]:  # --set applies to the model chosen, else to the first
        return hparams if name == (names[0] if names else None) else {}

    diagnostics: list[Diagnostic] = []
    lines = []
    graphs: list[tuple[Graph, dict[str, str]]] = []
    failed: set[str] = set()
    for name in names:
        try:
            spec = pipeline.build_model(program, name, hparams_of(name), training=False, from_text=True,
                                        limits=limits)
            graph = pipeline.forward_graph(spec, debug=debug)
            graphs.append((graph, {}))
            flops = total_flops(graph, {s: 1 for s in graph.symbols()})
            count = sum(int(numel(p.type.shape)) for p in spec.params)
            inputs = len(spec.inputs)
            lines.append(f"ok  {spec.name}: {count:,} parameters, {_si(flops)}FLOPs per example"
                         + (f", {inputs} input{'s' if inputs != 1 else ''}" if inputs else ""))
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
            failed.add(name)
    for train in program.root.trains:
        try:
            name = model_of(program, train).name.name
            if name in failed or (model and name != model):
                continue  # its own errors are reported; or not the model asked about
            spec = pipeline.build_model(program, name, hparams_of(name), training=True, from_text=True,
                                        limits=limits)
            recipe = recipe_of(train, spec)
            for objective in recipe.objectives:
                step = pipeline.train_step(spec, objective, recipe.clip_grad, debug)
                graphs.append((step.graph, step.donate))
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
    if diagnostics:
        raise DlnError(dedupe(diagnostics))
    return lines or ["ok"], graphs


def cmd_params(args) -> int:
    from dln.compiler import pipeline
    from dln.compiler.symbolic import numel

    program = _load(args)
    spec = pipeline.build_model(program, _model_name(args, program), args.hparams, from_text=True,
                                limits=_limits(args))
    rows = [(p.name, "[" + ", ".join(str(d) for d in p.type.shape) + "]", str(p.init), int(numel(p.type.shape)))
            for p in spec.params]
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(("name", "shape", "init"))]
    print(f"{'name':<{widths[0]}}  {'shape':<{widths[1]}}  {'init':<{widths[2]}}  {'count':>10}")
    for name, shape, init, count in rows:
        print(f"{name:<{widths[0]}}  {shape:<{widths[1]}}  {init:<{widths[2]}}  {count:>10,}")
    count = len(rows)
    print(f"{count} parameter{'s' if count != 1 else ''}, {sum(r[3] for r in rows):,} values")
    if spec.state:   # running statistics: saved with the weights, never trained
        print("model state: " + ", ".join(f"{s.name} {s.type}" for s in spec.state))
    return 0


def cmd_compile(args) -> int:
    from dln.runtime.artefacts import write_artefacts

    model = _model(args, backend="numpy")
    out = Path(args.output)
    written = write_artefacts(model, out, backend=args.backend or "triton", target=args.target, log=print,
                              precision=args.precision or "ieee", batch=args.batch)
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    model = _model(args, args.backend)
    if args.weights:
        _load_weights(model, args)
    inputs: dict[str, Any] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            print(f"dln run: --input expects NAME=FILE.npy, got {item!r}", file=sys.stderr)
            return 2
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DlnError(Diagnostic("E0702", f"cannot read input {name} from {path}: {e}")) from None
    outputs = model(**inputs)
    if args.output:
        # Through an open file: np.savez given a name appends ".npz" to one without it, and the
        # message would name a file that does not exist.  The file is written as named.
        try:
            with open(args.output, "wb") as f:
                np.savez(f, **outputs)
        except OSError as e:
            raise DlnError(Diagnostic("E0702", f"cannot write {args.output}: {e.strerror or e}")) from None
        print(f"wrote {', '.join(outputs)} to {args.output}")
    else:
        for name, value in outputs.items():
            arr = np.asarray(value)
            print(f"{name}: {arr.dtype}{list(arr.shape)}")
            print(np.array2string(arr, threshold=20, edgeitems=3, precision=4))
    return 0


def cmd_train(args) -> int:
    from dln.runtime import distributed

    launched = distributed.environment_size()
    if args.nproc is not None and launched is not None and args.nproc != launched:
        print(f"dln train: --nproc {args.nproc} under a launcher that started {launched} processes "
              f"(WORLD_SIZE={launched}); give one or the other", file=sys.stderr)
        return 2
    if args.nproc is not None and args.nproc > 1 and launched is None:
        from dln.runtime.launch import launch

        return launch(args.argv, args.nproc)
    group = distributed.from_environment("cuda" if _on_gpu(args) else "cpu")
    try:
        return _train(args, group)
    finally:
        distributed.leave(group)


def _on_gpu(args) -> bool:
    """Whether this run's buffers live on a GPU (the Triton backend with CUDA): nccl, not gloo."""
    from dln.runtime.backends import cuda_visible

    return args.backend != "numpy" and cuda_visible()


def _train(args, group) -> int:
    from dln.runtime.checkpoint import check_output
    from dln.runtime.train import train_file

    leader = group is None or group.leader   # among ranks, rank 0 alone writes and prints
    if args.save and leader:  # found out before training, not after
        check_output(args.save, "file", "the weights (--save)")
    settings = {k: getattr(args, k) for k in ("epochs", "batch", "seed", "checkpoint", "sync_batchnorm")
                if getattr(args, k) is not None}
    # --logdir none: no run directory at all; no --logdir: the checkpoint directory, else runs/<file stem>
    logdir = True if args.logdir is None else False if args.logdir == "none" else args.logdir
    history = train_file(Path(args.file), backend=args.backend, progress=False if args.no_progress else None,
                         debug=args.debug, weights=args.weights, strict=not args.non_strict, map=args.prefix_map,
                         over=args.over, from_text=True, precision=args.precision,
                         model=args.model, limits=_limits(args), check_numerics=args.check_numerics,
                         logdir=logdir, group=group, **settings, **args.hparams)
    if not leader:
        return 0
    if args.save and history.model is not None:
        _save_or_rescue(history.model, Path(args.save))
        print(f"saved weights to {args.save}")
    if history.epochs:
        last = history.epochs[-1]
        summary = {k: round(v, 6) for k, v in last.items() if k != "time"}
        print("final " + json.dumps(summary))
    return 0


def _save_or_rescue(model, path: Path) -> None:
    """Write the trained weights to `path`; when that fails anyway (the disk filled, the directory went
    away), write them where they can be found — the current directory, else the system's temporary
    one — and say where: a trained result is never lost."""
    import os
    import tempfile

    from dln.runtime.checkpoint import save_arrays

    try:
        model.save(path)
        return
    except (OSError, DlnError) as e:
        why = e.diagnostics[0].message if isinstance(e, DlnError) else f"{type(e).__name__}: {e}"
    name = f"{model.name}-rescued-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.safetensors"
    for directory in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            save_arrays(directory / name, model.state_dict(), model.metadata())
        except OSError:
            continue
        raise DlnError(Diagnostic("E0708", f"cannot write the weights (--save) {path}: {why}", None,
                                  (Note(f"the trained weights are saved in {directory / name}"),)))
    raise DlnError(Diagnostic("E0708", f"cannot write the weights (--save) {path}: {why}", None,
                              (Note("nor in the current or the temporary directory: the trained weights are "
                                    "lost"),)))


def cmd_eval(args) -> int:
    from dln.runtime.train import Trainer, recipe_for

    model = _model(args, args.backend)
    recipe = recipe_for(model)
    if args.precision is None and recipe.precision is not None:   # evaluated as it trained
        args.precision = recipe.precision
        model = _model(args, args.backend)
    _load_weights(model, args)
    base = Path(model.program.path).parent
    trainer = Trainer(model, recipe, base, progress=False)
    train, val = trainer._data()
    metrics = trainer.evaluate(val if val is not None else train)
    for k, v in metrics.items():
        print(f"{k}: {100 * v:.2f}%" if "accuracy" in k else f"{k}: {v:.6f}")
    return 0


def cmd_sample(args) -> int:
    """The prompt, then each generated character as it comes."""
    if not args.prompt:
        print("dln sample: --prompt must hold at least one character (generation continues a text)",
              file=sys.stderr)
        return 2
    model = _model(args, args.backend)
    _load_weights(model, args)
    chars = model._generate(args.prompt, args.tokens, args.temperature, args.seed, args.window)
    first = next(chars, "")   # errors found on the first run come before any output
    sys.stdout.write(args.prompt + first)
    sys.stdout.flush()
    for c in chars:
        sys.stdout.write(c)
        if c == "\n":
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_graph(args) -> int:
    from dln.runtime.artefacts import graph_dot

    model = _model(args)
    text = graph_dot(model, kernels=args.backend == "triton")
    if not args.output:
        print(text, end="")
        return 0
    out = Path(args.output)
    if out.suffix.lower() == ".svg":
        import shutil
        import subprocess   # here, not above: every other command starts without it

        dot = shutil.which("dot")
        if dot is not None:
            run = subprocess.run([dot, "-Tsvg", "-o", str(out)], input=text, text=True, capture_output=True)
            if run.returncode == 0:
                print(f"wrote {out}")
                return 0
            print(f"dot failed ({run.stderr.strip() or f'exit status {run.returncode}'}); writing DOT instead",
                  file=sys.stderr)
        else:
            print("SVG needs Graphviz's dot program, which is not installed; writing DOT instead", file=sys.stderr)
        out = out.with_suffix(".dot")
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_bench(args) -> int:
    from dln.runtime.bench import bench_report

    model = _model(args)
    if args.gpu is not None:
        from dln.runtime.bench import gpu_model_report

        print(gpu_model_report(model, args.gpu, batch=args.batch, precision=args.precision or "ieee"))
        return 0
    print(bench_report(model, batch=args.batch))
    return 0


def cmd_export(args) -> int:
    model = _model(args, backend="numpy")
    if args.weights:
        _load_weights(model, args)
    proto = model.export_onnx(args.output, opset=args.opset)
    print(f"wrote {args.output}: {len(proto.graph.node)} ONNX nodes, opset {args.opset}")
    return 0


def cmd_plot(args) -> int:
    from dln.runtime.monitor import plot

    print(f"wrote {plot(Path(args.run_dir), Path(args.output) if args.output else None)}")
    return 0


def cmd_import(args) -> int:
    from dln.runtime.onnx.importer import import_onnx, weights_path

    import_onnx(args.file, args.output)
    print(f"wrote {args.output} and {weights_path(args.output)}")
    return 0


COMMANDS: dict[str, Callable[[Any], int]] = {
    "check": cmd_check, "params": cmd_params, "compile": cmd_compile, "run": cmd_run, "train": cmd_train,
    "eval": cmd_eval, "sample": cmd_sample, "graph": cmd_graph, "bench": cmd_bench, "plot": cmd_plot,
}
COMMANDS["export"] = cmd_export   # ONNX out (dln.runtime.onnx.export)
COMMANDS["import"] = cmd_import   # ONNX in (dln.runtime.onnx.importer)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} "


if __name__ == "__main__":
    raise SystemExit(main())
