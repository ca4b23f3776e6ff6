"""A grid on cached states, read from TOML (``experiments/clir.toml`` is the committed one).

    name = "clir"                        # results in experiments/results/<name> (or --out)
    tasks = ["bible/ny", "quran/bn"]     # "<corpus>/<language>" (:mod:`.tasks`)
    strategies = ["none", "mse", "ot-cosine"]   # names of PRESETS or of [presets.<name>]
    seeds = [0, 1, 2]
    split = "test"                       # or "dev": held-out train pairs, for model selection
    baselines = ["none", "mse"]          # significance.csv compares every strategy with these
    bootstrap_samples = 2000

    [pool]                   # the data of every task (:func:`.tasks.make_task`)
    train_pairs = 2048
    dev_pairs = 1000
    max_queries = 2000

    [train]                  # TrainConfig fields of every run (trainable_layers: the top
    trainable_layers = 1     # layers trained; the others are frozen and cached)

    [presets.ot-eps001]      # a strategy defined (or a preset redefined): TrainConfig fields
    strategy = "optical"
    eps = 0.01

    [robustness]             # perturbed queries: every kind (noise, typo, codeswitch) at every
    kinds = ["typo", "noise"]   # rate; codeswitch only for the tasks whose language has a
    rates = [0.2]               # dictionary into English (:func:`dictionary_language`)

    [gap]                    # the high- and low-resource tasks whose means give the gap
    high = ["quran/es"]
    low = ["quran/bn"]

A run's TrainConfig is the grid's defaults (:data:`GRID_DEFAULTS`), then ``[train]``, then the
strategy's fields (a ``[train]`` field the strategy sets to another value is an error, as in
:mod:`..config`), then the task's language and the seed. Every run is built and
checked when the file is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ...bitext.dictionaries import ENGLISH_DICTIONARIES
from ...bitext.formats import lookup_language
from ...distillation.config import TrainConfig
from ...distillation.perturb import LEXICON_KINDS
from ...distillation.strategies import PRESETS
from ...evaluation.robustness import Perturbation
from ..config import (
    ExperimentConfigError,
    _choices,
    _list,
    _perturbations,
    _run_config,
    _tables,
    _train_fields,
)
from .ranking import SCORERS
from .tasks import SPLITS, parse_task
from .train_head import check_grid_config

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

GRID_DEFAULTS = TrainConfig(
    languages=("und",),
    student_layers=None,
    trainable_layers=1,
    max_length=128,
    steps=128,
    batch_size=16,
    micro_batch_size=16,
    lr=1e-4,
)
"""One top layer trained for 128 steps of 16 pairs (2,048 pairs: one pass over the pool)."""
_KEYS = {
    "name",
    "tasks",
    "strategies",
    "seeds",
    "split",
    "baselines",
    "bootstrap_samples",
    "pool",
    "train",
    "presets",
    "robustness",
    "gap",
}
_POOL = {"train_pairs": 2048, "dev_pairs": 1000, "max_queries": 2000}


class GridRun(NamedTuple):
    task: str
    strategy: str
    seed: int
    config: TrainConfig

    @property
    def id(self) -> str:
        return f"{self.task}/{self.strategy}/seed-{self.seed}"


@dataclass(frozen=True)
class GridConfig:
    name: str
    tasks: tuple[str, ...]
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    split: str
    baselines: tuple[str, ...]
    bootstrap_samples: int
    pool: Mapping[str, int]
    perturbations: tuple[Perturbation, ...]
    high: tuple[str, ...]
    low: tuple[str, ...]
    runs: tuple[GridRun, ...]

    @property
    def trainable_layers(self) -> int:
        return self.runs[0].config.trainable_layers

    def task_perturbations(self, task: str) -> tuple[Perturbation, ...]:
        """The perturbations of ``task``'s queries: code-switching only where its language has
        a dictionary into English, the others everywhere."""
        general = tuple(p for p in self.perturbations if p.kind not in LEXICON_KINDS)
        if general == self.perturbations or dictionary_language(task) is not None:
            return self.perturbations
        return general


def dictionary_language(task: str) -> str | None:
    """The ISO 639-3 code of ``task``'s language where FreeDict has a dictionary between it and
    English (:data:`~...bitext.dictionaries.ENGLISH_DICTIONARIES`, a fixed table: the grid's
    conditions never depend on what a machine has installed), else None."""
    language = lookup_language(parse_task(task)[1]).iso639_3
    return language if language in ENGLISH_DICTIONARIES else None


def _pool(values: Mapping, where: str) -> dict[str, int]:
    table = values.get("pool", {})
    unknown = sorted(set(table) - set(_POOL))
    if unknown:
        raise ExperimentConfigError(
            f"{where} [pool]: unknown keys {unknown}; known {sorted(_POOL)}"
        )
    pool = {**_POOL, **table}
    for key, value in pool.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExperimentConfigError(
                f"{where} [pool]: {key} must be an integer >= 1, got {value!r}"
            )
    return pool


def _gap(values: Mapping, tasks: tuple[str, ...], where: str) -> tuple[tuple, tuple]:
    table = values.get("gap", {})
    unknown = sorted(set(table) - {"high", "low"})
    if unknown:
        raise ExperimentConfigError(f"{where} [gap]: unknown keys {unknown}")
    if not table:
        return (), ()
    high, low = (_list(table, key, f"{where} [gap]") for key in ("high", "low"))
    _choices(high + low, tasks, "[gap] tasks", where)
    if set(high) & set(low):
        raise ExperimentConfigError(
            f"{where} [gap]: a task is both high and low: {sorted(set(high) & set(low))}"
        )
    return high, low


def parse_grid(values: Mapping, where: str = "grid config") -> GridConfig:
    """The grid of a TOML document's ``values`` (see the module docstring)."""
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    tasks = _list(values, "tasks", where)
    for task in tasks:
        try:
            parse_task(task)
        except ValueError as error:
            raise ExperimentConfigError(f"{where}: tasks: {error}") from None
    seeds = _list(values, "seeds", where, [0])
    if not all(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds
    ):
        raise ExperimentConfigError(f"{where}: seeds must be integers >= 0, got {seeds}")
    split = values.get("split", "test")
    _choices((split,), SPLITS, "split", where)
    presets = {**PRESETS, **_tables(values, "presets", where, {})}
    strategies = _choices(_list(values, "strategies", where), presets, "strategies", where)
    baselines = _choices(
        _list(values, "baselines", where, ["none"]),
        strategies,
        "baselines (each must be a strategy of the grid)",
        where,
    )
    samples = values.get("bootstrap_samples", 2000)
    if not isinstance(samples, int) or samples < 100:
        raise ExperimentConfigError(
            f"{where}: bootstrap_samples must be an integer >= 100, got {samples!r}"
        )
    train = values.get("train", {})
    _train_fields(train, f"{where} [train]")
    perturbations = _perturbations(values, where)
    lexical = [p.kind for p in perturbations if p.kind in LEXICON_KINDS]
    if lexical:
        try:
            with_dictionary = [task for task in tasks if dictionary_language(task)]
        except ValueError as error:
            raise ExperimentConfigError(f"{where} [robustness] {lexical[0]}: {error}") from None
        if not with_dictionary:
            raise ExperimentConfigError(
                f"{where} [robustness]: {lexical[0]} applies to no task: FreeDict has no "
                f"dictionary between English and the languages of {list(tasks)}"
            )
    runs = []
    # Seed by seed: a grid stopped part-way has every task and strategy of the first seeds.
    for seed, task, strategy in itertools.product(seeds, tasks, strategies):
        tables = [(f"{where} [train]", train),
                  (f"{where} strategy {strategy!r}", presets[strategy])]  # fmt: skip
        language = parse_task(task)[1]
        config = _run_config(GRID_DEFAULTS, tables, languages=(language,), seed=seed)
        try:
            check_grid_config(config)
            if config.adversarial_input in LEXICON_KINDS:
                raise ValueError(f"adversarial_input {config.adversarial_input!r} needs a "
                                 "bilingual dictionary")  # fmt: skip
        except ValueError as error:
            raise ExperimentConfigError(f"{where} strategy {strategy!r}: {error}") from None
        runs.append(GridRun(task, strategy, seed, config))
    layers = {run.config.trainable_layers for run in runs}
    if len(layers) > 1:
        raise ExperimentConfigError(
            f"{where}: every run must train the same number of top "
            f"layers (the cache is cut there), got {sorted(layers)}"
        )
    high, low = _gap(values, tasks, where)
    return GridConfig(
        name=str(values.get("name", "grid")),
        tasks=tasks,
        strategies=strategies,
        seeds=seeds,
        split=split,
        baselines=baselines,
        bootstrap_samples=samples,
        pool=_pool(values, where),
        perturbations=perturbations,
        high=high,
        low=low,
        runs=tuple(runs),
    )


def load_grid(path: Path) -> GridConfig:
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ExperimentConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_grid(values, str(path))


def run_settings(run: GridRun, grid: GridConfig) -> dict:
    """What decides a run's result: a finished run recorded with other settings is stale.
    Only its task's conditions count, so a condition that does not apply to a task (code-
    switching without a dictionary) leaves that task's records valid."""
    return {
        "train": run.config.to_dict(),
        "split": grid.split,
        "pool": dict(grid.pool),
        "perturbations": [p.name for p in grid.task_perturbations(run.task)],
        "scorers": list(SCORERS),
    }
