"""The texts a run trains and is evaluated on, and their file formats: the UDHR bitext (its
reader :mod:`.udhr`, the shipped files ``training/data/udhr`` and the train/test split
:mod:`.pairs`), TSV/JSONL/TREC readers and writers (:mod:`.formats`), the standard retrieval
benchmarks (:mod:`.retrieval_benchmarks`) and FreeDict word lists (:mod:`.dictionaries`).
"""
