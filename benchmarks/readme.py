"""Regenerate the benchmark section of the top-level README.

Everything between the lines ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->`` is
replaced; a README without both markers is left alone.
"""

from __future__ import annotations

from pathlib import Path

START = "<!-- benchmark:start -->"
END = "<!-- benchmark:end -->"


def replace_section(text: str, section: str) -> str | None:
    """``text`` with the lines between the markers replaced by ``section``; None if absent."""
    lines = text.splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() in (START, END)]
    starts = [i for i in marks if lines[i].strip() == START]
    ends = [i for i in marks if lines[i].strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return None
    return "".join([*lines[: starts[0] + 1], section.rstrip("\n") + "\n", *lines[ends[0]:]])


def update_readme(path: Path, section: str) -> bool:
    """Write the section into ``path``; False (file untouched) when the markers are missing."""
    if not path.exists():
        return False
    updated = replace_section(path.read_text(encoding="utf-8"), section)
    if updated is None:
        return False
    path.write_text(updated, encoding="utf-8")
    return True
