"""`dln train FILE --nproc N`: N local worker processes, as `torchrun --nproc-per-node N` would start them.

The parent picks a free port on this machine, starts each worker as
`python -m dln` with the same arguments and the standard environment (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; one
thread each unless OMP_NUM_THREADS says otherwise, as torchrun does), and
waits; a SIGTERM or Ctrl-C to it ends them too.  Rank 0's output is the
run's; the others' standard output is dropped and their error output kept
aside, shown only when that rank was the first to fail (the cause; the
others then report losing it).  The exit status is the first failure's,
else 0.  When one worker fails, the others stop on their own (their
collective fails, or times out: dln.runtime.distributed); those still
running after that timeout and a grace period (a stopped process) are
ended.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Sequence

from dln.runtime.distributed import timeout_seconds

# Seconds beyond the collectives' timeout before the survivors of a failure are ended: they were waiting in a
# collective already, which gives up within the timeout of its own.
GRACE = 5.0
POLL = 0.1


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the system's choice), for rank 0's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def worker_environment(rank: int, size: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    env.setdefault("OMP_NUM_THREADS", "1")   # N workers on one machine: torchrun's default too
    return env


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run `dln *argv` as `nproc` ranks on this machine; the exit status to forward."""
    port = free_port()
    timeout = timeout_seconds()
    procs: list[subprocess.Popen] = []
    errors: list[IO[bytes] | None] = []

    def terminated(signum, frame):   # the launcher ended (a job scheduler's SIGTERM): its workers with it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        for rank in range(nproc):
            err = None if rank == 0 else tempfile.TemporaryFile(mode="w+b")
            procs.append(subprocess.Popen([sys.executable, "-m", "dln", *argv],
                                          env=worker_environment(rank, nproc, port),
                                          stdout=None if rank == 0 else subprocess.DEVNULL,
                                          stderr=None if rank == 0 else err))
            errors.append(err)
        return _wait(procs, errors, timeout + GRACE)
    except KeyboardInterrupt:
        _end(procs)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for e in errors:
            if e is not None:
                e.close()


def _wait(procs: list[subprocess.Popen], errors: list[IO[bytes] | None], grace: float) -> int:
    """Wait for every worker; after the first failure, at most `grace` seconds for the rest."""
    first: tuple[int, int] | None = None      # (rank, status) of the first worker to fail
    failed_at = None
    while True:
        statuses = [p.poll() for p in procs]
        for rank, status in enumerate(statuses):
            if status not in (None, 0) and first is None:
                first, failed_at = (rank, status), time.monotonic()
        if all(s is not None for s in statuses):
            break
        if failed_at is not None and time.monotonic() - failed_at > grace:
            _end(procs)
            break
        time.sleep(POLL)
    if first is None:
        return 0
    rank, status = first
    if rank > 0 and errors[rank] is not None:   # the cause: rank 0's own output says only that it lost it
        errors[rank].seek(0)
        text = errors[rank].read().decode(errors="replace").rstrip()
        if text:
            print("\n".join(f"[rank {rank}] {line}" for line in text.splitlines()), file=sys.stderr)
    if status < 0:   # ended by a signal: the shell's convention
        print(f"dln: rank {rank} was ended by signal {-status}", file=sys.stderr)
        return 128 - status
    return status


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
