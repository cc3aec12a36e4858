"""Shrinking a failing case to a small program that fails the same way.

Greedy delta debugging over tokens (fuzzing.mutate.Tokens): remove chunks of
tokens, halving the chunk size down to one, keeping every removal after which
the oracle still reports the same failure signature.  Hangs are not shrunk
(each try would cost the whole time limit).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fuzzing.mutate import Tokens
from fuzzing.runner import Result, _Worker


def minimize(result: Result, limit: float = 5.0, budget: float = 30.0) -> str:
    """The smallest text found within `budget` seconds that fails like `result`."""
    if result.outcome.kind == "hang":
        return result.case.text
    target = (result.outcome.kind, result.outcome.signature)
    t = Tokens.of(result.case.text)
    space, words = list(t.space), list(t.words)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dln-shrink-") as scratch:
        worker = _Worker(limit, Path(scratch))
        try:
            def same(sp: list[str], ws: list[str]) -> bool:
                nonlocal worker
                text = "".join((" " if s else "") + w for s, w in zip(sp, ws)) + "\n"
                outcome = worker.check(text, limit)
                if outcome is None:
                    worker = _Worker(limit, Path(scratch))
                    return False
                return (outcome.kind, outcome.signature) == target

            if not same(space, words):  # normalizing whitespace changed the failure: keep the text as it is
                return result.case.text
            chunk = max(1, len(words) // 2)
            while chunk >= 1 and time.monotonic() - began < budget:
                i = 0
                while i < len(words) and time.monotonic() - began < budget:
                    sp, ws = space[:i] + space[i + chunk:], words[:i] + words[i + chunk:]
                    if ws and same(sp, ws):
                        space, words = sp, ws
                    else:
                        i += chunk
                chunk //= 2
        finally:
            worker.kill()
    return "".join((" " if s else "") + w for s, w in zip(space, words)) + "\n"
