"""A deep Q-network on gymnasium's CartPole-v1, driven from Python: dln, or the same algorithm in PyTorch.

    python examples/dqn_cartpole.py --json dqn_dln.json              # dln (examples/dqn.dln)
    python examples/dqn_cartpole.py --torch --json dqn_torch.json    # the same in PyTorch
    python examples/dqn_cartpole.py --plot dqn_dln.json dqn_torch.json -o examples/images/dqn_cartpole.png
    python examples/dqn_cartpole.py --bench                          # µs per training step, both sides
    python examples/dqn_cartpole.py --smoke                          # a few episodes, seconds

The algorithm (Mnih et al. 2015, with the settings of PyTorch's DQN tutorial): a replay buffer of
10k transitions, epsilon-greedy actions with epsilon decaying exponentially from 0.9 to 0.05,
AdamW (amsgrad) on the Huber loss of Q(s, a) against r + gamma * max_a' Q_target(s', a') over
batches of 128, and a target network that follows the online one by Polyak averaging after every
step (tau = 0.005).  Only the network differs between the two sides: `dln.compile("dqn.dln")` with
`dln.optimizer` and `Model.copy_from`, or a torch.nn.Sequential with torch.optim.AdamW; both start
from the same weights, and the environment, the exploration and the replay sampling draw from the
same seeds.  CartPole-v1 counts as solved when the mean return of 100
consecutive episodes reaches 195.  Needs gymnasium: pip install dln[rl].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import dln

HERE = Path(__file__).parent
SOLVED = 195.0


@dataclass
class Settings:
    episodes: int = 600
    seed: int = 0
    buffer: int = 10_000
    batch: int = 128
    gamma: float = 0.99
    lr: float = 1e-4
    clip_grad: float = 100.0
    eps_start: float = 0.9
    eps_end: float = 0.05
    eps_decay: float = 1_000     # steps for epsilon's excess over eps_end to shrink by e
    warmup: int = 128            # transitions gathered before learning starts
    tau: float = 0.005           # target <- tau * online + (1 - tau) * target after every step


@dataclass
class Result:
    side: str
    settings: dict
    returns: list[float] = field(default_factory=list)
    solved_at: int | None = None     # the episode that completes the first 100 with mean >= 195
    seconds: float = 0.0
    steps: int = 0


# ---- the two Q-networks: the same interface over dln and over PyTorch --------------------------------------

class DlnAgent:
    """examples/dqn.dln: the online model trained by `dln.optimizer`, the target a second model of the
    same program that `copy_from` refreshes."""

    def __init__(self, s: Settings) -> None:
        self.online = dln.compile(HERE / "dqn.dln", backend="numpy", seed=s.seed)
        self.target = dln.compile(HERE / "dqn.dln", backend="numpy", seed=s.seed)
        self.target.copy_from(self.online)
        self.opt = dln.optimizer(self.online, "adamw", lr=s.lr, amsgrad=True, clip_grad=s.clip_grad)
        self.tau = s.tau

    def q(self, states: np.ndarray) -> np.ndarray:
        return self.online(state=states)["q"]

    def q_target(self, states: np.ndarray) -> np.ndarray:
        return self.target(state=states)["q"]

    def learn(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        return self.opt.step(state=states, action=actions, target=targets)

    def sync(self) -> None:
        self.target.copy_from(self.online, tau=self.tau)


class TorchAgent:
    """The same network in PyTorch, from dln's initial weights: Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, s: Settings) -> None:
        import copy

        import torch

        self.torch = torch
        torch.manual_seed(s.seed)
        weights = dln.compile(HERE / "dqn.dln", backend="numpy", seed=s.seed).state_dict()
        hidden = weights["q.linear_0.weight"].shape[0]
        nn = torch.nn
        self.online = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 2))
        ours = iter(weights.values())   # the same order: each layer's weight, then its bias
        self.online.load_state_dict({k: torch.from_numpy(next(ours)) for k in self.online.state_dict()})
        self.target = copy.deepcopy(self.online)
        self.opt = torch.optim.AdamW(self.online.parameters(), lr=s.lr, amsgrad=True)
        self.clip, self.tau = s.clip_grad, s.tau

    def q(self, states: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.online(self.torch.from_numpy(states)).numpy()

    def q_target(self, states: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.target(self.torch.from_numpy(states)).numpy()

    def learn(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        torch = self.torch
        q = self.online(torch.from_numpy(states))
        taken = q.gather(1, torch.from_numpy(actions).unsqueeze(1)).squeeze(1)
        loss = torch.nn.functional.huber_loss(taken, torch.from_numpy(targets))
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.clip)
        self.opt.step()
        return loss.item()

    def sync(self) -> None:
        with self.torch.no_grad():
            for t, p in zip(self.target.parameters(), self.online.parameters()):
                t.copy_(self.tau * p + (1 - self.tau) * t)


AGENTS = {"dln": DlnAgent, "torch": TorchAgent}


# ---- the algorithm, the same for both ------------------------------------------------------------------------

class Replay:
    """A ring buffer of transitions (s, a, r, s', terminated)."""

    def __init__(self, size: int) -> None:
        self.s = np.zeros((size, 4), np.float32)
        self.a = np.zeros(size, np.int64)
        self.r = np.zeros(size, np.float32)
        self.s2 = np.zeros((size, 4), np.float32)
        self.done = np.zeros(size, np.float32)
        self.size, self.n, self.next = size, 0, 0

    def add(self, s, a, r, s2, done) -> None:
        i = self.next
        self.s[i], self.a[i], self.r[i], self.s2[i], self.done[i] = s, a, r, s2, done
        self.next = (i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, rng: np.random.Generator, batch: int):
        idx = rng.integers(0, self.n, batch)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.done[idx]


def make_env():
    try:
        import gymnasium
    except ImportError:
        sys.exit("dqn_cartpole needs gymnasium: pip install dln[rl]  (or pip install gymnasium)")
    return gymnasium.make("CartPole-v1")


def run(side: str, s: Settings, log=print) -> Result:
    """Train a DQN on CartPole-v1 for `s.episodes` episodes; the return of each."""
    env = make_env()
    agent = AGENTS[side](s)
    rng = np.random.default_rng(s.seed)        # exploration and replay sampling
    replay = Replay(s.buffer)
    result = Result(side, asdict(s))
    steps = 0
    began = time.perf_counter()
    for episode in range(s.episodes):
        state, _ = env.reset(seed=s.seed + episode)
        state = state.astype(np.float32)
        total, done = 0.0, False
        while not done:
            eps = s.eps_end + (s.eps_start - s.eps_end) * np.exp(-steps / s.eps_decay)
            if rng.random() < eps:
                action = int(rng.integers(0, 2))
            else:
                action = int(np.argmax(agent.q(state[None])[0]))
            nxt, reward, terminated, truncated, _ = env.step(action)
            nxt = nxt.astype(np.float32)
            replay.add(state, action, reward, nxt, float(terminated))   # a time limit is not a terminal state
            state, total, done = nxt, total + reward, terminated or truncated
            steps += 1
            if replay.n >= s.warmup:
                bs, ba, br, bs2, bdone = replay.sample(rng, s.batch)
                targets = br + s.gamma * (1.0 - bdone) * agent.q_target(bs2).max(axis=1)
                agent.learn(bs, ba, targets.astype(np.float32))
                agent.sync()
        result.returns.append(total)
        mean = float(np.mean(result.returns[-100:]))
        if result.solved_at is None and len(result.returns) >= 100 and mean >= SOLVED:
            result.solved_at = episode + 1
            log(f"{side}: solved at episode {episode + 1} (mean return of the last 100: {mean:.1f})")
        if (episode + 1) % 25 == 0:
            log(f"{side}: episode {episode + 1}  return {total:.0f}  mean(100) {mean:.1f}  steps {steps}  "
                f"{time.perf_counter() - began:.0f}s")
    result.seconds = time.perf_counter() - began
    result.steps = steps
    env.close()
    return result


# ---- timing and the picture -----------------------------------------------------------------------------------

def bench(rounds: int = 9, steps: int = 300, batch: int = Settings.batch) -> dict[str, float]:
    """Microseconds per training step on one batch: dln's `opt.step` against torch's
    `loss.backward(); opt.step()` (with zero_grad and clipping) for the same network.  Rounds of the
    two alternate, so that a machine's load drifting meanwhile weighs on both; the median round counts."""
    s = Settings(batch=batch)
    rng = np.random.default_rng(0)
    states = rng.standard_normal((batch, 4)).astype(np.float32)
    actions = rng.integers(0, 2, batch)
    targets = rng.standard_normal(batch).astype(np.float32)
    agents = {"dln": DlnAgent(s), "torch": TorchAgent(s)}
    times: dict[str, list[float]] = {side: [] for side in agents}
    for _ in range(rounds):
        for side, agent in agents.items():
            for _ in range(20):
                agent.learn(states, actions, targets)
            began = time.perf_counter()
            for _ in range(steps):
                agent.learn(states, actions, targets)
            times[side].append((time.perf_counter() - began) / steps * 1e6)
    return {side: float(np.median(t)) for side, t in times.items()}


def plot(paths: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    for path, color in zip(paths, ("tab:blue", "tab:orange")):
        r = json.loads(Path(path).read_text())
        returns = np.array(r["returns"])
        mean = [returns[max(0, k - 99):k + 1].mean() for k in range(len(returns))]
        solved = f", solved at {r['solved_at']}" if r["solved_at"] else ""
        ax.plot(np.arange(1, len(returns) + 1), returns, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(np.arange(1, len(returns) + 1), mean, color=color, label=f"{r['side']}: mean of 100{solved}")
    ax.axhline(SOLVED, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title("DQN on CartPole-v1: dln vs PyTorch")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch", action="store_true", help="the same algorithm in PyTorch")
    p.add_argument("--episodes", type=int, default=Settings.episodes)
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--smoke", action="store_true", help="a short run: 5 episodes")
    p.add_argument("--json", type=Path, help="write the returns per episode here")
    p.add_argument("--plot", type=Path, nargs="+", help="draw the learning curves of these JSON files")
    p.add_argument("-o", "--output", type=Path, default=HERE / "images" / "dqn_cartpole.png")
    p.add_argument("--bench", action="store_true", help="µs per training step, dln and torch")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot, args.output)
        print(f"wrote {args.output}")
        return
    if args.bench:
        print(json.dumps({k: round(v, 1) for k, v in bench().items()}))
        return
    s = Settings(episodes=5 if args.smoke else args.episodes, seed=args.seed)
    result = run("torch" if args.torch else "dln", s)
    last = result.returns[-100:]
    print(f"{result.side}: {len(result.returns)} episodes, {result.steps} steps in {result.seconds:.1f}s; "
          f"solved at {result.solved_at}; mean return of the last {len(last)}: {np.mean(last):.1f}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
