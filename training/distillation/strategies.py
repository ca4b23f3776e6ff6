"""The named distillation strategies an experiment compares: a loss of :mod:`.losses` with its
options, as :class:`~.config.TrainConfig` fields.

Choices for multilingual-e5-small, whose last-layer token states are anisotropic (cosine costs
between a Swahili and an English sentence's tokens lie in about [0.03, 0.3], squared Euclidean
ones in about [1, 15]): ``eps`` is a fraction of that range, so the plan is neither uniform nor
a hard matching, and the unbalanced ``tau`` = 0.1 is of the order of a poor match, so a token
with no counterpart sheds mass rather than pay it. An experiment config may redefine any of
these or add its own (``[strategies.<name>]``, :mod:`..experiments.config`).
"""

from __future__ import annotations

from types import MappingProxyType

PRESETS = MappingProxyType(
    {
        "ot-cosine": {"strategy": "optical", "cost": "cosine", "eps": 0.05},
        "ot-sqeuclidean": {"strategy": "optical", "cost": "sqeuclidean", "eps": 1.0},
        "ot-idf": {"strategy": "optical", "cost": "cosine", "eps": 0.05, "token_weights": "idf"},
        "ot-unbalanced": {"strategy": "optical", "cost": "cosine", "eps": 0.05, "tau": 0.1},
        "ot-debiased": {"strategy": "optical", "cost": "cosine", "eps": 0.05, "debias": True},
        "ot-typo": {
            "strategy": "optical", "cost": "cosine", "eps": 0.05,
            "adversarial_input": "typo", "adversarial_rate": 0.1,
        },
        "ot-fgsm": {
            "strategy": "optical", "cost": "cosine", "eps": 0.05,
            "adversarial_epsilon": 0.01, "adversarial_weight": 1.0,
        },
        "mse": {"strategy": "mse"},
        "token-mse": {"strategy": "token-mse"},
        "none": {"strategy": "none"},
    }
)  # fmt: skip
"""Strategy name -> the TrainConfig fields it sets. ``ot-typo`` trains on student texts with
10 % of their words given a typo; ``ot-fgsm`` adds the loss on input embeddings moved by 0.01
per coordinate (the word embeddings' mean absolute coordinate is 0.064)."""
