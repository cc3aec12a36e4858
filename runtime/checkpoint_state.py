"""A checkpoint directory's `state.json`: its schema, the files it names, and tidying the directory.

`state.json` is data from disk (a kill, a full disk or a person may have changed it), so it is checked
field by field before anything is restored or deleted: a field that does not fit is E0707, naming the
file and the field.  Besides the latest checkpoint's state it carries, under `previous`, the state of
the checkpoint before, whose files are kept until the next one is committed: when a file of the latest
is unreadable, training resumes from the previous one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from dln.dsl.diagnostics import Diagnostic, DlnError, Note

# The files a state.json may name: ours, in the checkpoint directory itself.
CHECKPOINT_FILE = re.compile(r"(weights|optimizer|best)-\d+\.safetensors")
# What the atomic writer leaves when killed mid-write: `<one of our names>.<random>.tmp`.
# The checkpoint directory is also the run directory (dln.runtime.monitor): its files are written the same way.
ORPHAN = re.compile(r"((weights|optimizer|best)-\d+\.safetensors|weights\.safetensors|state\.json|metrics\.csv|"
                    r"curves\.png|images\.png)\.[^.]+\.tmp")


class Damaged(Exception):
    """A field of state.json that does not fit its schema; `field` is its path (`schedules[0].scale`)."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


Check = Callable[[Any, str], Any]


def _count(value: Any, field: str, limit: int = 2 ** 63) -> int:
    """A whole number >= 0 below `limit` (counters feed i64 scalars)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise Damaged(field, f"expected a whole number in [0, {limit}), found {value!r}")
    return value


def _number(value: Any, field: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Damaged(field, f"expected a number, found {value!r}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise Damaged(field, f"expected a string, found {value!r}")
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise Damaged(field, f"expected true or false, found {value!r}")
    return value


def _optional(check: Check) -> Check:
    return lambda value, field: None if value is None else check(value, field)


def _list(check: Check) -> Check:
    def run(value: Any, field: str) -> list:
        if not isinstance(value, list):
            raise Damaged(field, f"expected a list, found {value!r}")
        return [check(v, f"{field}[{k}]") for k, v in enumerate(value)]
    return run


def _record(fields: Mapping[str, tuple[Check, bool]]) -> Check:
    """An object with these fields (name -> (check, required)); other fields are refused."""
    def run(value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise Damaged(field, f"expected an object, found {value!r}")
        out = {}
        for name, (check, required) in fields.items():
            where = f"{field}.{name}" if field else name
            if name in value:
                out[name] = check(value[name], where)
            elif required:
                raise Damaged(where, "missing")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise Damaged(f"{field}.{unknown[0]}" if field else unknown[0], "not a field of a checkpoint")
        return out
    return run


def _files(value: Any, field: str) -> dict[str, str]:
    """Kind -> file name: a name of the form `weights-3.safetensors` under its kind, nothing else (so
    nothing outside the directory, nor another kind's file, is ever read or deleted)."""
    if not isinstance(value, dict):
        raise Damaged(field, f"expected an object of file names, found {value!r}")
    for kind, name in value.items():
        match = CHECKPOINT_FILE.fullmatch(name) if isinstance(name, str) else None
        if match is None or match.group(1) != kind:
            raise Damaged(f"{field}.{kind}", f"names {name!r}, not a {kind}-N.safetensors of the checkpoint")
    for kind in ("weights", "optimizer"):
        if kind not in value:
            raise Damaged(f"{field}.{kind}", "missing")
    return dict(value)


def _metrics(value: Any, field: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Damaged(field, f"expected an object of metrics, found {value!r}")
    for k, v in value.items():
        _number(v, f"{field}.{k}")
    if "epoch" not in value:
        raise Damaged(f"{field}.epoch", "missing")
    return dict(value)


def _u128(value: Any, field: str) -> int:
    return _count(value, field, 2 ** 128)


def _u32(value: Any, field: str) -> int:
    return _count(value, field, 2 ** 32)


_GENERATOR = _record({   # NumPy's PCG64 state, as `bit_generator.state` gives it
    "bit_generator": (_text, True),
    "state": (_record({"state": (_u128, True), "inc": (_u128, True)}), True),
    "has_uint32": (lambda v, f: _count(v, f, 2), True),
    "uinteger": (_u32, True),
})

_FIELDS: dict[str, tuple[Check, bool]] = {
    "model": (_text, True),
    "fingerprint": (_text, True),
    "epochs_done": (_count, True),
    "files": (_files, True),
    "step_counts": (_list(_count), True),
    "rng_step": (_count, True),
    "eval_rng_step": (_count, False),     # absent in checkpoints written before evaluation drew
    "schedules": (_list(_record({"scale": (_number, True), "best": (_optional(_number), True),
                                 "bad_epochs": (_count, True)})), True),
    "history": (_list(_metrics), True),
    "fill_rng": (_GENERATOR, True),
    "early_stop": (_record({"best_val": (_optional(_number), True), "bad_epochs": (_count, True),
                            "stopped": (_flag, True)}), True),
}
_STATE = _record(_FIELDS)
_STATE_WITH_PREVIOUS = _record({**_FIELDS, "previous": (_optional(_STATE), False)})


def validate(state: Any, ckpt: Path, objectives: int) -> dict:
    """`state` (state.json as parsed) checked against the schema, and against itself and the recipe
    (one step count and one schedule per objective; one history entry per epoch done)."""
    try:
        checked = _STATE_WITH_PREVIOUS(state, "")
        for prefix, s in (("", checked), ("previous.", checked.get("previous"))):
            if s is None:
                continue
            kind = s["fill_rng"]["bit_generator"]
            if kind != "PCG64":
                raise Damaged(prefix + "fill_rng.bit_generator", f"expected \"PCG64\", found {kind!r}")
            for name in ("step_counts", "schedules"):
                if len(s[name]) != objectives:
                    raise Damaged(prefix + name, f"has {len(s[name])} entries, the train section {objectives} "
                                                 "objective(s)")
            if len(s["history"]) != s["epochs_done"]:
                raise Damaged(prefix + "history", f"has {len(s['history'])} epochs, but epochs_done is "
                                                  f"{s['epochs_done']}")
            best = s["early_stop"]["best_val"]
            if best is not None and math.isnan(best):
                raise Damaged(prefix + "early_stop.best_val", "is NaN")
    except Damaged as e:
        raise damaged(ckpt, f"state.json field '{e.field}': {e.why}") from None
    return checked


def damaged(ckpt: Path, why: str) -> DlnError:
    return DlnError(Diagnostic("E0707", f"damaged checkpoint in {ckpt}: {why}", None,
                               (Note("delete the checkpoint directory (or use another) to start over"),)))


def tidy(ckpt: Path, keep: set[str]) -> None:
    """Delete what a killed run left in `ckpt`: temporary files of our atomic writer, and checkpoint
    files no committed state names (written before a kill, before state.json named them).  Only names
    of ours are touched."""
    if not ckpt.is_dir():
        return
    for path in ckpt.iterdir():
        name = path.name
        if ORPHAN.fullmatch(name) or CHECKPOINT_FILE.fullmatch(name) and name not in keep:
            path.unlink(missing_ok=True)
