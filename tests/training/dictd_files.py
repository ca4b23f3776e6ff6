"""Hand-made dictd databases (the layout of :mod:`optical_ops.training.bitext.dictionaries`)."""

from __future__ import annotations

import gzip
from pathlib import Path

from optical_ops.training.bitext.dictionaries import DICTD_BASE64_DIGITS


def encode_dictd_number(value: int) -> str:
    digits = DICTD_BASE64_DIGITS[value % 64]
    while value >= 64:
        value //= 64
        digits = DICTD_BASE64_DIGITS[value % 64] + digits
    return digits


def write_dictd(directory: Path, name: str, entries: list[tuple[str, str]]) -> None:
    """``<name>.index`` and a gzip ``<name>.dict.dz`` holding ``entries`` (headword, text)."""
    data, index_lines = b"", []
    for headword, text in entries:
        encoded = text.encode("utf-8")
        offset, length = encode_dictd_number(len(data)), encode_dictd_number(len(encoded))
        index_lines.append(f"{headword}\t{offset}\t{length}\n")
        data += encoded
    (directory / f"{name}.index").write_text("".join(index_lines), encoding="utf-8")
    with gzip.open(directory / f"{name}.dict.dz", "wb") as handle:
        handle.write(data)
