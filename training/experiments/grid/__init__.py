"""OPTICAL at corpus scale on two CPU cores: the grid of :mod:`.runner` trains only the student's
top layers, on token states of its frozen lower layers computed once and cached on disk
(:mod:`.features`), and scores every run on thousands of held-out queries with paired bootstrap
confidence intervals (:mod:`.bootstrap`).

    python -m optical_ops.training grid --config experiments/clir.toml
"""
