"""The one shape every corpus reader returns: English paired with another language, unit by unit.

An :class:`AlignedPair` is the smallest aligned unit of a corpus (a verse, a help paragraph) with
a whitespace-free ``id`` unique in the corpus and the ``group`` it belongs to, the whole unit that
a split holds out (a book, a surah, a help module). A :class:`ParallelCorpus` is one language's
pairs in corpus order, with the counts of what its reader could not align (left out) or moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AlignedPair:
    """``english`` and ``other`` text of unit ``id``, a member of ``group``."""

    group: str
    id: str
    english: str
    other: str


@dataclass(frozen=True)
class ParallelCorpus:
    """The pairs of corpus ``name`` for ``language`` (ISO 639-1 code of the non-English side)
    and ``{what: count}`` of the units the alignment left out or moved."""

    name: str
    language: str
    pairs: list[AlignedPair]
    notes: dict[str, int] = field(default_factory=dict)
