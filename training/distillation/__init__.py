"""The training proper: a run's :class:`~.config.TrainConfig`, the losses and named strategies,
the :class:`~.trainer.DistillationTrainer` with its batching, checkpoints, ``torchrun`` set-up,
IDF weights, and the input perturbations (:mod:`.perturb`) of adversarial training
(:mod:`.adversarial`), which robustness evaluation applies to queries too.
"""
