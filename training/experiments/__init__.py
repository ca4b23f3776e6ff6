"""Research experiments: the end-to-end :mod:`.demo`, the TOML grid of strategies × languages ×
seeds × encoders (:mod:`.config`, run by :mod:`.runner`, aggregated over seeds by
:mod:`.aggregate` into :mod:`.report` tables and :mod:`.plots`), and the corpus-scale
:mod:`.grid` on cached frozen-layer states.
"""
