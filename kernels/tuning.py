"""Autotuning that leaves the model's state as it found it, and remembers its choices.

`triton.autotune` times every candidate configuration by launching the
kernel several times on the arguments of the real launch.  A kernel that
updates a buffer in place (an optimizer step over the parameters and their
moments, the random counter's advance) or accumulates into one with atomics
(a scatter-add) would then apply its update once per timed run.  The
generator knows which arguments a kernel writes over a buffer it reads and
which it accumulates into (`module.tuning_hooks`); the tuner restores the former
after every timed run (`restore_value`) and zeroes the latter before it
(`reset_to_zero`), Triton's own contract for both.

`TunedKernel` is copied into every generated module (which imports only
torch and triton) and used by `Program(device, autotune=True)`.  Its choices
are kept per device name and shape range (each size rounded up to a power
of two) in a JSON file per kernel, named after a hash of the kernel's source
and candidates, so a later run launches the kernel with its choice and
times nothing.  A damaged file is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from typing import Any, Callable


class TunedKernel:
    """`kernel[grid](*args, **kwargs)` with the configuration `autotune` (triton.autotune's signature) picks
    among `candidates` for this device and shape range, or the one the `cache` file remembers; `hooks`: the
    kernel's `TUNING` entry (the arguments to restore and to reset)."""

    def __init__(self, fn, candidates: list[dict], key: list[str], hooks: dict[str, Any], cache: str | None,
                 device_name: str, autotune: Callable) -> None:
        import triton

        configs = [triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                                 num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 3))
                   for c in candidates]
        self.fn, self.key, self.cache, self.device_name = fn, key, cache, device_name
        self.tuner = autotune(configs=configs, key=key, restore_value=hooks["restore_value"],
                              reset_to_zero=hooks["reset_to_zero"])(fn)
        self.devices = self._read()
        self.chosen = self.devices.setdefault(device_name, {})

    def __getitem__(self, grid) -> Callable[..., None]:
        def launch(*args, **kwargs) -> None:
            named = dict(zip(self.tuner.arg_names, args))
            shapes = ",".join(f"{k}<={1 << max(0, int(named[k]) - 1).bit_length()}" for k in self.key)
            choice = self.chosen.get(shapes)
            if choice is not None:
                self.fn[grid](*args, **kwargs, **choice["kwargs"], num_warps=choice["num_warps"],
                              num_stages=choice["num_stages"])
                return
            self.tuner[grid](*args, **kwargs)
            best = self.tuner.best_config
            self.chosen[shapes] = {"kwargs": dict(best.kwargs), "num_warps": best.num_warps,
                                   "num_stages": best.num_stages}
            self._write()
        return launch

    def _read(self) -> dict[str, Any]:
        """The cache file's choices by device, {} when there is none or it cannot be read as one."""
        if self.cache is None or not os.path.exists(self.cache):
            return {}
        try:
            with open(self.cache) as f:
                data = json.load(f)
            for choices in data.values():
                for choice in choices.values():
                    if not (isinstance(choice["kwargs"], dict) and isinstance(choice["num_warps"], int)
                            and isinstance(choice["num_stages"], int)):
                        raise ValueError(f"not a configuration: {choice!r}")
            return data
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.warn(f"ignoring the autotuning cache {self.cache}: {e}")
            return {}

    def _write(self) -> None:
        """The file replaced whole (other devices' choices kept), so that a reader never sees half of it."""
        if self.cache is None:
            return
        os.makedirs(os.path.dirname(self.cache), exist_ok=True)
        partial = f"{self.cache}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            json.dump(self.devices, f, indent=1, sort_keys=True)
        os.replace(partial, self.cache)


def tuned_source() -> str:
    """`TunedKernel`'s source, for the generated module."""
    return inspect.getsource(TunedKernel)


def cache_name(kernel_name: str, source: str, candidates: list[dict]) -> str:
    """The cache file of a kernel: its choices hold for this source and these candidates only."""
    digest = hashlib.sha256((source + json.dumps(candidates, sort_keys=True)).encode()).hexdigest()[:16]
    return f"{kernel_name}-{digest}.json"
