"""Data-parallel training: the MLP and LeNet steps on 1 and 2 processes, the gradient bytes, and 8 GPUs modeled.

* Scaling on this machine (2 cores, so 2 processes use both; every process
  has 1 thread in each pool: OMP, OpenBLAS, MKL).  Four configurations per
  model, each in its own processes: 1 process at the per-rank batch b, 1
  process at 2b, and 2 ranks at b each joined by `gloo`, with the default
  buckets and with small ones.  The ranks run the step as `dln train
  --nproc 2` does — `runtime.optim.Optimizer` with a group: the split step
  (`pipeline.split_step`) through `gradient_sync.GradientSync`, the
  gradients (and the loss and metrics' sums, in the last bucket) summed in
  buckets with `all_reduce`, then the update — and one process runs the
  fused step, as `dln train` does.  The time in the exchange is clocked from
  outside (`distributed.run_collective` wrapped in the worker: starting the
  buckets and waiting for them); it includes waiting for the other rank.
  The configurations take turns (one round of steps each, the
  others waiting on a pipe, a pause before each turn, as benchmarks/paired.py
  does); medians over rounds, with the fastest and slowest round and the
  load average before and after.
* Communication volume: each model's gradient bytes per step, bucketed as
  `gradient_sync.buckets` buckets them, and what a ring all_reduce sends per
  rank: 2(N-1)/N x the bytes.
* 8 GPUs, modeled (no GPU): the split step's kernels planned for an H100 and
  timed by its model (dln.kernels.gpu_model, compiler/fusion/target.py),
  beside a ring all_reduce of the gradients over NVLink 4 and over NDR
  InfiniBand (`ring_time`), and whether the exchange could hide behind the
  backward.

    .venv/bin/python benchmarks/distributed.py [--rounds 15] [--models mlp lenet] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paired  # noqa: E402


@dataclass(frozen=True)
class Bench:
    file: str
    batch: int              # the per-rank batch b (the file's)
    steps: int              # steps per round
    gpu_sizes: dict         # the sizes of the 8-GPU model's per-GPU batch
    small_buckets_mb: float  # DLN_BUCKET_MB of the configuration with small buckets: three or four of them

    def data(self, rows: int) -> dict[str, np.ndarray]:
        """`rows` examples of the model's inputs, the same for every configuration (seed 0)."""
        rng = np.random.default_rng(0)
        if self.file == "lenet.dln":
            return {"images": rng.random((rows, 1, 28, 28), dtype=np.float32), "y": rng.integers(0, 10, rows)}
        return {"x": rng.random((rows, 784), dtype=np.float32), "y": rng.integers(0, 10, rows)}


BENCHES = {"mlp": Bench("mlp_784.dln", 128, 40, {"B": 4096}, 0.1),
           "lenet": Bench("lenet.dln", 64, 10, {"B": 512}, 0.05),
           "gpt": Bench("gpt.dln", 16, 0, {"B": 16, "T": 64}, 0.25)}   # modeled only
# (label, processes, batch per process in units of b, small buckets): the 2-process configurations with the
# default buckets (DDP's caps: these models' gradients fit the first, so one bucket, started when the
# backward ends) and with small ones (`small_buckets_mb`), each started as soon as the backward fills it.
CONFIGS = (("1 process, batch b", 1, 1, False), ("1 process, batch 2b", 1, 2, False),
           ("2 processes, batch b each", 2, 1, False), ("2 processes, batch b each, small buckets", 2, 1, True))


# ---- one process of a configuration ---------------------------------------------------------------------------
def _clocked(clock: dict[str, float]) -> None:
    """Wrap `distributed.run_collective` (through which GradientSync starts and waits for each bucket's
    all_reduce) to add the seconds spent in each exchange to `clock[what]`: a hook from outside, the exchange
    itself unchanged.  For the gradients that is the time the step spends on them — starting each bucket,
    then waiting for what the backward did not cover."""
    from dln.runtime import distributed

    real = distributed.run_collective

    def collective(group, what, run):
        began = time.perf_counter()
        real(group, what, run)
        clock[what] = clock.get(what, 0.0) + time.perf_counter() - began
    distributed.run_collective = collective


def worker(name: str, per_process: int) -> None:
    """One process of a configuration: the step as `dln train` runs it (with the group the environment
    describes, as `dln train --nproc` starts it), driven by the parent over stdin/stdout: a line with a
    number of steps, answered with the seconds per step and per all_reduce."""
    import dln
    from dln.runtime import distributed
    from dln.runtime.optim import Optimizer
    from dln.runtime.train import default_objective

    clock: dict[str, float] = {}
    _clocked(clock)
    bench = BENCHES[name]
    group = distributed.from_environment("cpu")
    size, rank = (group.size, group.rank) if group else (1, 0)
    model = dln.compile(str(HERE / bench.file), backend="numpy", seed=0)
    opt = Optimizer(model, default_objective(model), group=group)
    if group is not None:   # as the Trainer does before the first step
        distributed.broadcast_state(group, model.persistent)
    total = per_process * size
    feeds = {k: distributed.shard(v, rank, per_process) for k, v in bench.data(total).items()}
    rows = (per_process, total, rank * per_process) if group else None
    env = {"B": per_process}
    loss = opt.objective.loss
    buckets = len(opt.sync.buckets) if opt.sync is not None else 0

    def step() -> float:
        return opt.run(feeds, env, 1e-3, "in the benchmark", rows)[loss]

    try:
        first = step()
        for _ in range(3):
            step()
        print(json.dumps({"first_loss": first}), flush=True)
        for line in sys.stdin:
            if line.startswith("alone"):
                print(json.dumps(_alone(group, opt.sync, int(line.split()[1]))), flush=True)
                continue
            steps = int(line)
            clock.clear()
            began = time.perf_counter()
            for _ in range(steps):
                step()
            print(json.dumps({"seconds": (time.perf_counter() - began) / steps, "buckets": buckets,
                              **{k: v / steps for k, v in clock.items()}}), flush=True)
    finally:
        distributed.leave(group)


def _alone(group, sync, reps: int) -> list[float]:
    """The median, fastest and slowest seconds of gloo's all_reduce with nothing else running, of buffers the
    sizes of the buckets (fresh buffers: the step's own are left as they are)."""
    import torch
    import torch.distributed as dist

    tensors = [torch.zeros(b.flat.size, dtype=torch.float32) for b in sync.buckets]
    times = []
    for _ in range(reps + 2):       # the first two absorb the ranks' different start
        began = time.perf_counter()
        for t in tensors:
            dist.all_reduce(t)
        times.append(time.perf_counter() - began)
    return [statistics.median(times[2:]), min(times[2:]), max(times[2:])]


# ---- the parent: configurations taking turns ------------------------------------------------------------------
ALONE_REPS = 50
GRADS = "the all_reduce of the gradients"   # (the loss and metrics' sums travel in the last bucket)


def _start(name: str, processes: int, per_process: int, small_buckets: bool) -> list[subprocess.Popen]:
    from dln.runtime.launch import free_port, worker_environment

    port = free_port()
    procs = []
    for rank in range(processes):
        env = paired.thread_env(1)
        if small_buckets:
            env["DLN_BUCKET_MB"] = str(BENCHES[name].small_buckets_mb)
        if processes > 1:
            env = worker_environment(rank, processes, port, env)
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", name, str(per_process)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
    return procs


def _ms(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs) * 1e3, 3), "spread": [round(min(xs) * 1e3, 3),
                                                                         round(max(xs) * 1e3, 3)]}


def scaling(name: str, rounds: int, steps: int | None = None) -> dict:
    """The three configurations of `name`, taking turns for `rounds` rounds of `steps` steps each."""
    bench = BENCHES[name]
    steps = steps or bench.steps
    procs = {label: _start(name, n, k * bench.batch, small) for label, n, k, small in CONFIGS}
    first = {label: [json.loads(p.stdout.readline())["first_loss"] for p in ps] for label, ps in procs.items()}
    seen: dict[str, list[list[dict]]] = {label: [] for label in procs}
    load_before = os.getloadavg()[0]
    for r in range(rounds):
        order = list(procs)
        order = order[r % len(order):] + order[:r % len(order)]    # each configuration goes first in turn
        for label in order:
            time.sleep(paired.SETTLE_S)
            for p in procs[label]:
                p.stdin.write(f"{steps}\n")
                p.stdin.flush()
            seen[label].append([json.loads(p.stdout.readline()) for p in procs[label]])
    load_after = os.getloadavg()[0]
    ranks = procs[CONFIGS[2][0]]
    time.sleep(paired.SETTLE_S)
    for p in ranks:
        p.stdin.write(f"alone {ALONE_REPS}\n")
        p.stdin.flush()
    alone = [json.loads(p.stdout.readline()) for p in ranks]
    for ps in procs.values():
        for p in ps:
            p.stdin.close()
        for p in ps:
            p.wait()
    out = {}
    for label, n, k, _ in CONFIGS:
        rows = seen[label]
        # A step of N ranks ends when the slower one's does.
        step = [max(a["seconds"] for a in answers) for answers in rows]
        one = {"processes": n, "batch_per_process": k * bench.batch, "step_ms": _ms(step),
               "buckets": rows[0][0]["buckets"],
               "examples_per_s": round(n * k * bench.batch / statistics.median(step), 1),
               "first_losses": [round(x, 6) for x in first[label]]}
        if n > 1:
            one["all_reduce_ms"] = [_ms([answers[rank][GRADS] for answers in rows]) for rank in range(n)]
            # The rest of the step: the gradient graph, the weighted copies into the buckets, the update.
            one["rest_ms"] = [_ms([a[rank]["seconds"] - a[rank][GRADS] for a in rows]) for rank in range(n)]
            # The rank that reaches the exchange last waits least: its time there is the exchange itself
            # (at most), the other's adds the wait for it.
            one["exchange_ms"] = _ms([min(x[GRADS] for x in a) for a in rows])
        out[label] = one
    one_b, two_b, two_p, small = (out[label] for label, *_ in CONFIGS)
    t1, t1x2, t2, t2s = (c["step_ms"]["median"] for c in (one_b, two_b, two_p, small))
    grads = statistics.mean(r["median"] for r in two_p["all_reduce_ms"])
    grads_s = statistics.mean(r["median"] for r in small["all_reduce_ms"])
    vol = volume(name)
    return {"model": bench.file, "b": bench.batch, "configs": out, "gradient_bytes": vol["gradient_bytes"],
            "metric_bytes": vol["metric_bytes"],
            # gloo alone (after the rounds, the other configurations idle): rank 0's median, ms
            "alone_ms": [round(x * 1e3, 3) for x in alone[0]],
            "efficiency": round(t1 / t2, 3),                      # (2b / t2) / (2 x b / t1)
            "efficiency_small_buckets": round(t1 / t2s, 3),
            "speedup_same_global_batch": round(t1x2 / t2, 3),     # 1 process at 2b against 2 at b each
            "speedup_same_global_batch_small_buckets": round(t1x2 / t2s, 3),
            "gradient_wait_ms": [round(grads, 3), round(grads_s, 3)],   # default buckets; small ones
            "all_reduce_share": round(grads / t2, 3),
            "exchange_share": round(two_p["exchange_ms"]["median"] / t2, 3),
            "rounds": rounds, "steps_per_round": steps, "cpus": os.cpu_count(),
            "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)]}


# ---- communication volume ---------------------------------------------------------------------------------------
def ring_bytes(nbytes: int, ranks: int) -> float:
    """Bytes each rank sends (and receives) in a ring all_reduce of `nbytes`: a reduce-scatter and an
    all-gather of N-1 steps each, every step 1/N of the buffer."""
    return 2 * (ranks - 1) / ranks * nbytes


def ring_time(nbytes: int, ranks: int, bandwidth: float, hop_latency: float) -> tuple[float, float]:
    """(bandwidth term, latency term) of a ring all_reduce in seconds: ring_bytes / the bandwidth each way
    of a rank's link, and 2(N-1) steps of `hop_latency` each."""
    return ring_bytes(nbytes, ranks) / bandwidth, 2 * (ranks - 1) * hop_latency


def volume(name: str) -> dict:
    """The gradient bytes of one step of `name` and their buckets, as GradientSync lays them out on the NumPy
    backend (unless DLN_BUCKET_MB says otherwise)."""
    import dln
    from dln.compiler import pipeline
    from dln.compiler.passes.global_rows import ROW
    from dln.runtime import gradient_sync
    from dln.runtime.train import default_objective

    model = dln.compile(str(HERE / BENCHES[name].file), backend="numpy", seed=0)
    step = pipeline.split_step(model.train_spec, default_objective(model))
    prepared = model.backend.prepare(step.graph, {**model.persistent, **model.step_rng(),
                                                  ROW: np.array(0, np.int64)}, step.donate)
    first, cap = gradient_sync.bucket_caps()
    buckets = [b.flat.nbytes for b in gradient_sync.buckets(step, model.backend, cap, first,
                                                          gradient_sync.backward_order(prepared))]
    params = sum(int(np.prod(v.shape)) for v in model.parameters().values())
    metrics = (1 + len(step.metrics)) * 4    # the loss and metrics' sums, float32 slots of the last bucket
    return {"model": BENCHES[name].file, "parameters": params, "gradient_bytes": sum(buckets),
            "buckets": buckets, "metric_bytes": metrics, "step": step, "compiled": model}


# ---- 8 GPUs, modeled ---------------------------------------------------------------------------------------------
# NVLink 4 on the H100 SXM5: 900 GB/s of total (both directions) bandwidth per GPU (18 links; the H100
# datasheet, and the "NVIDIA H100 Tensor Core GPU Architecture" whitepaper, 2022), so 450 GB/s each way —
# what a ring's steady send-and-receive can use.  NDR InfiniBand: 400 Gb/s = 50 GB/s each way per port,
# one ConnectX-7 per GPU as in a DGX H100.  Peak figures: NCCL reaches less.
LINKS = {"NVLink 4 (450 GB/s each way)": (450e9, 5e-6), "InfiniBand NDR (50 GB/s each way)": (50e9, 10e-6)}
GPUS = 8


def gpu_step(vol: dict, sizes: dict, gpu: str = "h100") -> dict:
    """The modeled H100 time of the split step's kernels at `sizes`: the forward, the backward (kernels of
    backward nodes only; the loss kernel, which starts the backward, counted with the forward) and the
    update graph."""
    from dln.compiler.fusion.target import MACHINES
    from dln.compiler.ir import Phase
    from dln.kernels.gpu_model import model_module
    from dln.kernels.module import generate_module

    machine = MACHINES[gpu]
    step = vol["step"]
    out = {"forward": 0.0, "backward": 0.0, "update": 0.0, "kernels": 0, "launch": 0.0}
    for graph, donate, part in ((step.graph, step.donate, None), (step.update, step.update_donate, "update")):
        env = {s: sizes[s] for s in graph.symbols()}
        generated = generate_module(graph, donate or {}, "ieee", machine=machine, sizes=env)
        plan = generated.plan
        for k in model_module(generated, machine, env):
            group = plan.groups[int(re.match(r"k(\d+)_", k.name).group(1))]
            phases = {plan.graph.node(m).phase for m in group.members}
            where = part or ("backward" if phases == {Phase.BACKWARD} else "forward")
            out[where] += k.time.time_s
            out["kernels"] += 1
            out["launch"] += k.time.launch_s
    return out


def eight_gpus(names=("mlp", "lenet", "gpt")) -> list[dict]:
    rows = []
    for name in names:
        vol = volume(name)
        t = gpu_step(vol, BENCHES[name].gpu_sizes)
        compute = t["forward"] + t["backward"] + t["update"]
        for link, (bandwidth, hop) in LINKS.items():
            band, lat = ring_time(vol["gradient_bytes"], GPUS, bandwidth, hop)
            comm = band + lat
            rows.append({"model": vol["model"], "sizes": BENCHES[name].gpu_sizes, "link": link,
                         "gradient_bytes": vol["gradient_bytes"], "buckets": len(vol["buckets"]),
                         "ring_bytes_per_gpu": ring_bytes(vol["gradient_bytes"], GPUS),
                         "forward_us": t["forward"] * 1e6, "backward_us": t["backward"] * 1e6,
                         "update_us": t["update"] * 1e6, "kernels": t["kernels"], "compute_us": compute * 1e6,
                         "launch_us": t["launch"] * 1e6,
                         "ring_bandwidth_us": band * 1e6, "ring_latency_us": lat * 1e6, "ring_us": comm * 1e6,
                         # the exchange after the whole gradient graph, nothing overlapped
                         "serial_step_us": (compute + comm) * 1e6,
                         # at best (buckets overlapping the backward): only what the backward cannot cover
                         "exposed_if_overlapped_us": max(0.0, comm - t["backward"]) * 1e6})
    return rows


# ---- reporting ---------------------------------------------------------------------------------------------------
def print_scaling(s: dict) -> None:
    print(f"{s['model']}, b = {s['b']}; medians over {s['rounds']} rounds of {s['steps_per_round']} steps; "
          f"1 thread a process on {s['cpus']} CPUs; load average 1 min {s['load_avg_1min_before_after']}")
    for label, c in s["configs"].items():
        extra = ""
        if "all_reduce_ms" in c:
            extra = f"; exchange {[r['median'] for r in c['all_reduce_ms']]} ms (rank 0, 1)"
        print(f"  {label:<28}{c['step_ms']['median']:9.3f} ms/step (spread {c['step_ms']['spread']}), "
              f"{c['examples_per_s']:10.1f} examples/s{extra}; first losses {c['first_losses']}")
    print(f"  scaling efficiency {s['efficiency']} (default buckets), {s['efficiency_small_buckets']} "
          f"(small buckets, overlapping the backward); gradient exchange {s['gradient_wait_ms']} ms; "
          f"1 process at 2b / 2 processes: {s['speedup_same_global_batch']}; "
          f"all_reduce share of the 2-process step {s['all_reduce_share']} (waits included), "
          f"{s['exchange_share']} (the later rank's: the exchange itself); gloo alone {s['alone_ms']} ms")


def _scaling_table(s: dict) -> str:
    rows = ["| configuration | step, ms (spread) | examples / s | exchange: buckets started + waited for, ms "
            "(rank 0; 1) | rest of the step, ms (rank 0; 1) | first loss |",
            "| --- | --- | --- | --- | --- | --- |"]
    two_p, small = (s["configs"][c[0]] for c in CONFIGS[2:])
    for label, c in s["configs"].items():
        b = c["batch_per_process"]
        ar = rest = "-"
        if "all_reduce_ms" in c:
            ar, rest = ("; ".join(f"{r['median']} ({r['spread'][0]} - {r['spread'][1]})" for r in c[key])
                        for key in ("all_reduce_ms", "rest_ms"))
        who = f"{c['processes']} processes, batch {b} each, {c['buckets']} bucket{'s' * (c['buckets'] > 1)}" \
            if c["processes"] > 1 else f"1 process, batch {b}"
        rows.append(f"| {who} | {c['step_ms']['median']} "
                    f"({c['step_ms']['spread'][0]} - {c['step_ms']['spread'][1]}) | {c['examples_per_s']:,.0f} "
                    f"| {ar} | {rest} | {', '.join(map(str, c['first_losses']))} |")
    return (f"**{s['model']}**, b = {s['b']}: medians of {s['rounds']} rounds of {s['steps_per_round']} steps; "
            f"load average (1 min) before, after: {s['load_avg_1min_before_after']}.\n\n" + "\n".join(rows) +
            f"\n\nScaling efficiency (2 processes' examples/s over twice 1 process's at b): **{s['efficiency']}** "
            f"with the default buckets ({two_p['buckets']} here), **{s['efficiency_small_buckets']}** with "
            f"{small['buckets']} small ones overlapping the backward (the step's time on the gradients' "
            f"exchange, starting the buckets and waiting for them: {s['gradient_wait_ms'][0]} ms against "
            f"{s['gradient_wait_ms'][1]} ms, the ranks' mean); 2 processes at b against 1 process at 2b (the same "
            f"global batch): **{s['speedup_same_global_batch']}x** (small buckets: "
            f"**{s['speedup_same_global_batch_small_buckets']}x**); "
            f"time in the exchange, a share of the 2-process step: **{s['all_reduce_share']:.1%}** (the ranks' "
            f"mean, waiting for the other rank included), **{s['exchange_share']:.1%}** at the rank that reached it "
            f"last (the exchange itself, at most: {two_p['exchange_ms']['median']} ms a step for "
            f"{s['gradient_bytes']:,} bytes of gradients and {s['metric_bytes']} of sums, "
            f"{s['gradient_bytes'] / two_p['exchange_ms']['median'] / 1e3:,.0f} MB/s over loopback); gloo's "
            f"all_reduce of the buckets alone (after the rounds, nothing else of the benchmark running; median "
            f"of {ALONE_REPS}, fastest and slowest): {_spread(s['alone_ms'])} ms. The "
            f"rest of a rank's step (the gradient graph, the weighted copy into the bucket, the update) takes "
            f"{statistics.mean(r['median'] for r in two_p['rest_ms']):.3f} ms against the fused step's "
            f"{s['configs'][CONFIGS[0][0]]['step_ms']['median']} ms in 1 process at b (the difference: the step in "
            f"two graphs with the copy between, and two processes, gloo's threads and the machine's other load "
            f"sharing the two cores).\n\n")


def _spread(x: list[float]) -> str:
    return f"{x[0]} ({x[1]} - {x[2]})"


def _volume_table(vols: list[dict]) -> str:
    rows = ["| model | parameters | gradient bytes per step | buckets (bytes) | ring bytes sent per rank, 2 ranks "
            "| ... 8 ranks | loss and metrics' sums (in the last bucket), bytes |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in vols:
        rows.append(f"| {v['model']} | {v['parameters']:,} | {v['gradient_bytes']:,} | {len(v['buckets'])} "
                    f"({', '.join(f'{b:,}' for b in v['buckets'])}) | {ring_bytes(v['gradient_bytes'], 2):,.0f} "
                    f"| {ring_bytes(v['gradient_bytes'], 8):,.0f} | {v['metric_bytes']} |")
    return "\n".join(rows) + "\n\n"


def _model_table(rows: list[dict]) -> str:
    out = ["| model, per-GPU batch | link | gradient bytes | ring: bandwidth + latency = us | forward, backward, "
           "update (modeled H100), us | step without overlap, us | exchange's share | exposed if overlapped, us |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sizes = ", ".join(f"{k} = {v}" for k, v in r["sizes"].items())
        out.append(f"| {r['model']}, {sizes} | {r['link']} | {r['gradient_bytes']:,} | {r['ring_bandwidth_us']:.1f} + "
                   f"{r['ring_latency_us']:.0f} = **{r['ring_us']:.1f}** | {r['forward_us']:.1f}, "
                   f"{r['backward_us']:.1f}, "
                   f"{r['update_us']:.1f} | {r['serial_step_us']:.1f} | {r['ring_us'] / r['serial_step_us']:.0%} "
                   f"| {r['exposed_if_overlapped_us']:.1f} |")
    return "\n".join(out) + "\n\n"


def _model_summary(model: list[dict]) -> str:
    """What the modeled rows say, in words computed from them."""
    lines = []
    for link in LINKS:
        rows = [r for r in model if r["link"] == link]
        latency = sum(r["ring_latency_us"] > r["ring_bandwidth_us"] for r in rows)
        shares = [r["ring_us"] / r["serial_step_us"] for r in rows]
        hidden = [r["model"] for r in rows if r["exposed_if_overlapped_us"] == 0]
        exposed = [f"{r['exposed_if_overlapped_us']:.0f} us for {r['model']}" for r in rows
                   if r["exposed_if_overlapped_us"] > 0]
        lines.append(f"- {link}: the exchange is latency-bound for {latency} of {len(rows)} models (the 2(N-1) "
                     f"hops cost more than the bytes); without overlap it is {min(shares):.0%} - {max(shares):.0%} "
                     f"of the step; overlapped with the backward it would hide entirely for "
                     f"{', '.join(hidden) or 'none of them'}" + (f", and leave {', '.join(exposed)} exposed"
                                                                   if exposed else "") + ".")
    steps = {r["model"]: (r["compute_us"], r["launch_us"] / r["compute_us"], r["kernels"]) for r in model}
    sizes = "; ".join(f"{m} {c:.0f} us in {k} kernels, {launch:.0%} of it launches"
                      for m, (c, launch, k) in steps.items())
    return ("\n".join(lines) + f"\n\nThese models are small for an H100 (modeled steps: {sizes}): 8 GPUs pay off "
            "only where the backward is long enough to cover the exchange. The loss and metrics travel in the "
            "last bucket: no exchange of their own.\n")


TITLE = "## Data-parallel training (issue 13: 1 to 2 processes, communication per step, 8 GPUs modeled)"


def section(scalings: list[dict], vols: list[dict], model: list[dict]) -> str:
    text = (f"{TITLE}\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/distributed.py`. "
            f"**The machine has {os.cpu_count()} cores**: 2 processes use both, 1 process leaves one idle; every "
            "process runs 1 thread in each pool (OMP, OpenBLAS, MKL = 1), and the machine is shared with other "
            "work (the load averages below). Four configurations a model, each in its own processes: 1 process "
            "at the per-rank batch b and at 2b (the fused step, as `dln train` runs it), and 2 ranks at b each on "
            "`gloo` (`runtime.optim.Optimizer` with a group, as `dln train --nproc 2` runs it: the split step "
            "through `gradient_sync.GradientSync`, the gradients summed by `all_reduce` in buckets, the loss "
            "and metrics' sums in the last one, then the update) — in the default buckets (DDP's caps: these models' "
            "gradients fit the first, 1 MB, so one bucket, started when the backward ends) and in small ones "
            "(`DLN_BUCKET_MB`: three or four here), each started asynchronously as soon as the backward has "
            "filled it. The time in "
            "the collectives is clocked by wrapping `distributed.run_collective` in the worker: for the gradients, "
            "starting the buckets and waiting for them (what the backward did not cover); it includes waiting "
            "for the other rank. The configurations "
            "take turns (a round of steps each, a 0.3 s pause before each turn, each going first in turn), on "
            "the same data (the first losses of 1 process at 2b and of the 2 ranks agree: the same step).\n\n")
    text += "".join(_scaling_table(s) for s in scalings)
    text += ("**Communication per step.** The gradients are float32, 4 bytes a parameter, in buckets as DDP "
             "lays them out (the first up to 1 MB, the others up to 25 MB: `gradient_sync.FIRST_BUCKET_BYTES`, "
             "`BUCKET_BYTES`; `DLN_BUCKET_MB` sets the cap): each of these models fits one. A ring all_reduce "
             "sends, and "
             "receives, 2(N-1)/N x the bytes per rank (N-1 reduce-scatter steps and N-1 all-gather steps of "
             "1/N each): at 2 ranks, the gradient bytes themselves (gloo picks its own algorithm; this is what a "
             "bandwidth-optimal one moves).\n\n" + _volume_table(vols))
    text += ("**8 GPUs, modeled (no GPU, not a measurement).** Ring all_reduce over 8 GPUs: time = 2(N-1)/N x "
             "bytes / bandwidth + 2(N-1) x hop latency. Bandwidth: NVLink 4 on the H100 SXM5, 900 GB/s total "
             "per GPU (the H100 datasheet and architecture whitepaper), i.e. 450 GB/s each way; InfiniBand NDR, "
             "400 Gb/s = 50 GB/s each way per GPU (one ConnectX-7 per GPU, as in a DGX H100). Both peaks: NCCL "
             "reaches less. Hop latency assumed 5 us on NVLink and 10 us on InfiniBand (not measured; for small "
             "messages NCCL's tree and low-latency protocols do better, so the latency term is on the "
             "pessimistic side). Compute: the split step's kernels (forward + backward graph, update graph) "
             "planned for and modeled on an H100 SXM5 by `dln.kernels.gpu_model` (compiler/fusion/target.py: "
             "max(compute, memory) at peak FP32, wave-quantized, 3 us launch each; the batches of "
             "RESULTS-model.md, and the GPT block's file batch). \"Without overlap\": the exchange after the whole "
             "gradient graph, as with one bucket (DDP's default caps hold each of these models in one). \"Exposed "
             "if overlapped\": what remains when the exchange runs concurrently with the backward (smaller "
             "buckets, `DLN_BUCKET_MB`, started as their gradients are ready, as both backends do; the model "
             "assumes the whole exchange can hide behind the backward, the last bucket's cannot quite, and "
             "each bucket more pays the latency term again).\n\n" + _model_table(model))
    text += _model_summary(model)
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: the model's)")
    parser.add_argument("--models", nargs="+", choices=("mlp", "lenet"), default=["mlp", "lenet"])
    parser.add_argument("--record", action="store_true", help="write the figures to benchmarks/RESULTS.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        worker(args.child[0], int(args.child[1]))
        return {}
    scalings = []
    for name in args.models:
        s = scaling(name, args.rounds, args.steps)
        print_scaling(s)
        scalings.append(s)
    vols = [volume(name) for name in ("mlp", "lenet", "gpt")]
    for v in vols:
        print(f"{v['model']}: {v['parameters']:,} parameters, {v['gradient_bytes']:,} gradient bytes in "
              f"{len(v['buckets'])} bucket(s); ring bytes per rank at 2 ranks "
              f"{ring_bytes(v['gradient_bytes'], 2):,.0f}, "
              f"at 8 {ring_bytes(v['gradient_bytes'], 8):,.0f}")
    model = eight_gpus()
    for r in model:
        print(f"{r['model']} {r['sizes']} over {r['link']}: ring {r['ring_bandwidth_us']:.1f} + "
              f"{r['ring_latency_us']:.0f} "
              f"us; modeled H100 forward {r['forward_us']:.1f}, backward {r['backward_us']:.1f}, update "
              f"{r['update_us']:.1f} us; step without overlap {r['serial_step_us']:.1f} us, exposed if overlapped "
              f"{r['exposed_if_overlapped_us']:.1f} us")
    if args.record:
        paired.record("Data-parallel training", section(scalings, vols, model))
    for v in vols:
        v.pop("step"), v.pop("compiled")
    return {"scaling": scalings, "volume": vols, "eight_gpus": model}


if __name__ == "__main__":
    main()
