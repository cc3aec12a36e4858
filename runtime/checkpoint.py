"""Weights and training state on disk: safetensors for arrays, JSON for the rest.

Every write goes to a temporary file in the same directory and is renamed
over the old one, so a crash leaves either the old checkpoint or the new,
never half of one.  Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

from dln.dsl.diagnostics import Diagnostic, DlnError, Note


def _atomic(path: Path, write) -> None:
    """`write(tmp)` a file beside `path`, flushed to disk, then renamed over it.  (dsl/tables.py writes
    its parse-table cache the same way, with its own copy: the front end does not import the runtime.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode(path))   # mkstemp's 0600 would hide the file from a TensorBoard run by another user
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mode(path: Path) -> int:
    """The permissions `path` gets: those it has when it is being replaced, else what `open` would give a
    new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_output(path: str | Path, kind: str, what: str, suffix: str = ".safetensors",
                 before: str = "nothing was trained") -> None:
    """Before any work is done: can `path` be written as a `kind` ("file" or "directory")?  It must not
    be the other kind, and it or its nearest existing ancestor must be a writable directory (missing
    directories are created on writing).  `what` says what the path is for (`--save`, `checkpoint`),
    `suffix` what a file's name ends with, `before` what was not done."""
    path = Path(path)

    def refuse(why: str) -> DlnError:
        return DlnError(Diagnostic("E0708", f"cannot write {what} {path}: {why}", None,
                                   (Note(f"{before}; choose another path"),)))

    if kind == "file" and path.is_dir():
        raise refuse(f"it is a directory (name a {suffix} file)")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise refuse("it is a file, not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise refuse("permission denied")
    ancestor = path.parent if kind == "file" or not path.exists() else path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise refuse(f"{ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise refuse(f"the directory {ancestor} is not writable")


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    # np.ascontiguousarray makes a 0-d array 1-d: keep the shape (a counter such as num_batches_tracked).
    tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DlnError(Diagnostic("E0702", f"no such weights file: {path}")) from None
    except Exception as e:  # safetensors reports a corrupt header in several ways
        raise DlnError(Diagnostic("E0702", f"cannot read weights from {path}: {e}", None,
                                  (Note("weights are safetensors files, never pickles (torch.save's .pt): in "
                                        "PyTorch, safetensors.torch.save_file(module.state_dict(), "
                                        "\"weights.safetensors\")"),))) from None


def write_text(path: str | Path, text: str) -> None:
    """A text file replaced atomically."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    """A file (a picture) replaced atomically."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def save_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: {e}")) from None
