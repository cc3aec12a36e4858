"""docs/errors.md and the table of codes (dln.dsl.diagnostics.CODES) agree: every code has a section
with its meaning and an example, and the document names no code that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from dln.dsl.diagnostics import CODES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()


def test_every_code_has_a_section_and_a_row():
    sections = re.findall(r"^## (E\d{4})$", DOC, re.M)
    rows = dict(re.findall(r"^\| \[(E\d{4})\]\(#e\d{4}\) \| (.+) \|$", DOC, re.M))
    assert sorted(sections) == sorted(CODES) and len(sections) == len(set(sections))
    assert rows == CODES
    for code in CODES:
        section = DOC.split(f"\n## {code}\n", 1)[1].split("\n## ", 1)[0]
        assert f"*{CODES[code]}*" in section, code
        assert f"error[{code}]" in section, f"{code}: no example output"
