"""Weights loaded into a model whose names or head differ: a prefix map and what a load did.

Transfer learning starts from another network's weights: a PyTorch checkpoint whose backbone
sits under other names (`backbone.conv1.weight` for the model's `features.conv1.weight`), or
another dln model with another head.  `rename` applies a map of name prefixes, old to new, to the
file's names before they are matched; `Loaded` is what the load then did, as torch's
`_IncompatibleKeys` reports it, plus what was copied, so that a misspelled prefix shows at once.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span, listing


class Loaded(NamedTuple):
    """The model's names that were copied in, the model's names the weights lacked (kept as they
    were), and the weights' names the model lacks (ignored) — after the map."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]

    def summary(self, source: str = "the weights") -> str:
        """One line: `loaded 6 arrays from pre.safetensors; missing (kept): logits.weight, ...`."""
        parts = [f"loaded {len(self.loaded)} array{'s' if len(self.loaded) != 1 else ''} from {source}"]
        if self.missing:
            parts.append(f"missing (kept as they were): {listing(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {listing(self.unexpected)}")
        return "; ".join(parts)


def check_map(prefixes: Any, where: Span | None) -> dict[str, str]:
    """A map given from Python: a mapping of old prefixes to new ones, strings both."""
    if prefixes is None:
        return {}
    if not isinstance(prefixes, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in prefixes.items()):
        raise DlnError(Diagnostic("E0710", f"argument map must be a dict of name prefixes, old to new, such as "
                                           f"{{\"backbone.\": \"features.\"}}, got {prefixes!r:.60}", where))
    return dict(prefixes)


def parse_map(items: list[str]) -> dict[str, str]:
    """`--map OLD=NEW`, given once or several times, as a dict.  Raises ValueError for a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep:
            raise ValueError(f"--map expects OLD=NEW (name prefixes, e.g. backbone.=features.), got {item!r}")
        if old in out:
            raise ValueError(f"--map gives the prefix {old!r} twice")
        out[old] = new
    return out


def rename(names: list[str], prefixes: Mapping[str, str], where: Span | None) -> dict[str, str]:
    """Each of the weights' names under the map: the longest old prefix it begins with replaced by the
    new one (an empty new prefix strips it: `module.=`; an empty old one prefixes every name: `=encoder.`);
    names no prefix matches stay.  A prefix that matches no name (a typo) and two names that end up
    the same are errors: both would load something else than meant, silently."""
    ordered = sorted(prefixes, key=len, reverse=True)
    out: dict[str, str] = {}
    for name in names:
        old = next((p for p in ordered if name.startswith(p)), None)
        out[name] = name if old is None else prefixes[old] + name[len(old):]
    for old in prefixes:
        if not any(name.startswith(old) for name in names):
            raise DlnError(Diagnostic("E0703", f"the map's prefix '{old}' matches no name in the weights", where,
                                      (Note(f"the weights' names: {listing(sorted(names))}"),)))
    seen: dict[str, str] = {}
    for name, new in out.items():
        if new in seen:
            raise DlnError(Diagnostic("E0703", f"the map makes '{seen[new]}' and '{name}' both '{new}'", where))
        seen[new] = name
    return out


