"""An experiment grid read from TOML: strategies × languages × seeds × encoders, and how to
evaluate each run.

    name = "default"                     # results in runs/experiments/<name> (or --out)
    languages = ["swh", "som", "fin"]    # ISO 639-1/3 codes
    train_languages = "joint"            # joint: one student for all; each: one per language
    seeds = [0, 1]
    strategies = ["ot-cosine", "mse", "none"]   # :data:`~..distillation.strategies.PRESETS`
    scorers = ["mean", "maxsim"]         # :data:`~..evaluation.scoring.SCORERS`
    measures = ["nDCG@10", "MRR"]        # of the Markdown tables and plots (the CSV has all)

    [train]                  # TrainConfig fields of every run; "none" is None
    steps = 20

    [robustness]             # query perturbations: every kind at every rate
    kinds = ["noise", "typo", "codeswitch"]
    rates = [0.2]

    [encoders.e5-small]      # label: path (omitted: the offline multilingual-e5-small),
    document_prefix = "passage: "        # documents' prefix, and TrainConfig fields

    [presets.ot-eps01]       # a strategy defined (or a preset redefined): TrainConfig fields
    strategy = "optical"
    eps = 0.1

    [collection]             # evaluate on a benchmark instead of the UDHR test articles:
    reader = "xquad"         # miracl | xquad | mtop | mmarco (:mod:`..bitext.retrieval_benchmarks`)
    root = "/data/xquad"     # called as reader(root, language, **the other keys)
    document_language = "en"

A run's :class:`~..distillation.config.TrainConfig` is, from weakest to strongest: the demo's
model and sizes (:data:`~.demo.DEMO_CONFIG`), ``[train]``, the encoder's fields, the strategy's
fields, then the run's languages and seed. A field that ``[train]`` or an encoder sets and a
strategy sets to another value is an error, not silently overridden (``[train] eps = 0.1`` with
``ot-cosine``, whose ε is 0.05: define a preset instead), and so is a table setting a grid axis
(``languages``, ``seed``, and ``teacher`` / ``student_init``, which are the encoder's ``path``).
Every run's config is built, with its fields' types checked, when the file is read, so a bad value
fails before anything trains, with the table it came from in the message.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..bitext.formats import lookup_language
from ..bitext.pairs import udhr_file
from ..bitext.retrieval_benchmarks import read_miracl, read_mmarco, read_mtop, read_xquad
from ..distillation.config import TrainConfig
from ..distillation.perturb import PERTURBATIONS
from ..distillation.strategies import PRESETS
from ..evaluation.evaluate import DOCUMENT_PREFIX
from ..evaluation.metrics import MEASURES
from ..evaluation.robustness import Perturbation
from ..evaluation.scoring import SCORERS
from .demo import DEMO_CONFIG

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

READERS = {"miracl": read_miracl, "xquad": read_xquad, "mtop": read_mtop, "mmarco": read_mmarco}
TRAIN_LANGUAGES = ("joint", "each")
DEFAULT_ENCODER = "e5-small"
_NONE = "none"
_KEYS = {
    "name", "languages", "train_languages", "seeds", "strategies", "scorers", "measures",
    "train", "robustness", "encoders", "presets", "collection",
}  # fmt: skip
_ENCODER_KEYS = {"path", "document_prefix"}
_AXES = {  # TrainConfig fields the grid sets per run -> where to set them
    "languages": "the top-level languages", "seed": "the top-level seeds",
    "teacher": "an [encoders.<label>] path", "student_init": "an [encoders.<label>] path",
}  # fmt: skip


class ExperimentConfigError(ValueError):
    """A bad experiment config; the message names the file and the key or table."""


class Run(NamedTuple):
    """One cell of the grid: who trains, on what, how, and how its queries meet documents."""

    encoder: str
    strategy: str
    languages: tuple[str, ...]
    seed: int
    config: TrainConfig
    document_prefix: str

    @property
    def id(self) -> str:
        """``<encoder>/<strategy>/<languages joined by +>/seed-<seed>``: its results' path."""
        return f"{self.encoder}/{self.strategy}/{'+'.join(self.languages)}/seed-{self.seed}"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    languages: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[Run, ...]
    scorers: tuple[str, ...]
    measures: tuple[str, ...]
    perturbations: tuple[Perturbation, ...]
    collection: Mapping | None
    strategies: tuple[str, ...]
    encoders: tuple[str, ...]


def _train_fields(values: Mapping, where: str) -> dict:
    """TrainConfig fields of a table, ``"none"`` read as None where the field allows it."""
    if not isinstance(values, Mapping):
        raise ExperimentConfigError(f"{where}: must be a table of TrainConfig fields")
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown TrainConfig fields {unknown}")
    axes = sorted(set(values) & set(_AXES))
    if axes:
        raise ExperimentConfigError(f"{where}: {axes[0]} is set per run by the grid: use "
                                    f"{_AXES[axes[0]]}")  # fmt: skip
    return {
        name: None if value == _NONE and "None" in fields[name].type else value
        for name, value in values.items()
    }


def _list(values: Mapping, key: str, where: str, default=None) -> tuple:
    value = values.get(key, default)
    if not isinstance(value, list) or not value:
        raise ExperimentConfigError(f"{where}: {key} must be a non-empty list, got {value!r}")
    if len(set(map(str, value))) != len(value):
        raise ExperimentConfigError(f"{where}: {key} lists an entry twice: {value}")
    return tuple(value)


def _tables(values: Mapping, key: str, where: str, default: dict) -> dict:
    """A table of tables (``[presets.<name>]``, ``[encoders.<label>]``)."""
    tables = values.get(key, default)
    if not isinstance(tables, Mapping) or not all(
        isinstance(table, Mapping) for table in tables.values()
    ):
        raise ExperimentConfigError(f"{where}: {key} must be tables [{key}.<name>]")
    return dict(tables)


def _choices(values: tuple, known, key: str, where: str) -> tuple:
    unknown = [value for value in values if value not in known]
    if unknown:
        raise ExperimentConfigError(
            f"{where}: unknown {key} {unknown}; known: {', '.join(sorted(known))}"
        )
    return values


def _language_code(code: str, udhr: bool, where: str) -> str:
    """The UDHR file code (``sw`` -> ``swh``) where UDHR data is used, else the ISO 639-3."""
    try:
        return udhr_file(code)[0] if udhr else lookup_language(code).iso639_3
    except (ValueError, FileNotFoundError) as error:
        raise ExperimentConfigError(f"{where}: languages: {error}") from None


def _perturbations(values: Mapping, where: str) -> tuple[Perturbation, ...]:
    table = values.get("robustness", {})
    unknown = sorted(set(table) - {"kinds", "rates"})
    if unknown:
        raise ExperimentConfigError(f"{where} [robustness]: unknown keys {unknown}")
    if not table:
        return ()
    kinds = _choices(_list(table, "kinds", f"{where} [robustness]"), PERTURBATIONS, "kinds", where)
    rates = _list(table, "rates", f"{where} [robustness]")
    if not all(isinstance(rate, (int, float)) and 0 < rate <= 1 for rate in rates):
        raise ExperimentConfigError(f"{where} [robustness]: rates must be in (0, 1], got {rates}")
    return tuple(Perturbation(kind, float(rate)) for kind in kinds for rate in rates)


def _run_config(base: TrainConfig, tables: list[tuple[str, Mapping]], **axes) -> TrainConfig:
    """``base`` with each table's fields applied in turn, then the run's axes. The last table
    is the strategy's: the others may not set its fields to other values."""
    fields, set_by = {}, {}
    *weaker, (strategy_where, strategy) = tables
    for where, table in weaker:
        for name, value in _train_fields(table, where).items():
            fields[name], set_by[name] = value, where
    for name, value in _train_fields(strategy, strategy_where).items():
        if name in fields and fields[name] != value:
            raise ExperimentConfigError(
                f"{set_by[name]}: {name} = {fields[name]!r} would be overridden by "
                f"{strategy_where}, which sets {name} = {value!r}: define a strategy with the "
                "values you want in a [presets.<name>] table"
            )
        fields[name] = value
    try:
        return dataclasses.replace(base, **fields, **axes)
    except (ValueError, TypeError) as error:
        raise ExperimentConfigError(f"{' + '.join(w for w, _ in tables)}: {error}") from None


def parse_experiment(values: Mapping, where: str = "experiment config") -> ExperimentConfig:
    """The experiment of a TOML document's ``values`` (see the module docstring)."""
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    train = values.get("train", {})
    _train_fields(train, f"{where} [train]")
    bitext = train.get("bitext") not in (None, _NONE)
    collection = values.get("collection")
    if collection is not None and collection.get("reader") not in READERS:
        raise ExperimentConfigError(
            f"{where} [collection]: reader must be one of {sorted(READERS)}, "
            f"got {collection.get('reader')!r}"
        )
    udhr = not bitext or collection is None
    languages = tuple(
        _language_code(code, udhr, where) for code in _list(values, "languages", where)
    )
    if len(set(languages)) != len(languages):
        raise ExperimentConfigError(f"{where}: languages name a language twice: {languages}")
    train_languages = values.get("train_languages", "joint")
    _choices((train_languages,), TRAIN_LANGUAGES, "train_languages", where)
    groups = [languages] if train_languages == "joint" else [(code,) for code in languages]
    seeds = _list(values, "seeds", where, [0])
    if not all(isinstance(seed, int) and seed >= 0 for seed in seeds):
        raise ExperimentConfigError(f"{where}: seeds must be integers >= 0, got {seeds}")
    presets = {**PRESETS, **_tables(values, "presets", where, {})}
    strategies = _choices(_list(values, "strategies", where), presets, "strategies", where)
    encoders = _tables(values, "encoders", where, {DEFAULT_ENCODER: {}})
    runs = []
    for label, encoder in encoders.items():
        path = encoder.get("path")
        model = {"teacher": path, "student_init": path}
        fields = {key: value for key, value in encoder.items() if key not in _ENCODER_KEYS}
        for strategy, group, seed in itertools.product(strategies, groups, seeds):
            tables = [(f"{where} [train]", train), (f"{where} [encoders.{label}]", fields),
                      (f"{where} strategy {strategy!r}", presets[strategy])]  # fmt: skip
            config = _run_config(
                DEMO_CONFIG, tables, **model, languages=() if bitext else group, seed=seed
            )
            prefix = encoder.get("document_prefix", DOCUMENT_PREFIX)
            runs.append(Run(label, strategy, group, seed, config, prefix))
    scorers = _choices(_list(values, "scorers", where, ["mean"]), SCORERS, "scorers", where)
    measures = _choices(
        _list(values, "measures", where, ["nDCG@10"]), MEASURES, "measures", where
    )
    return ExperimentConfig(
        name=str(values.get("name", "experiment")),
        languages=languages,
        seeds=seeds,
        runs=tuple(runs),
        scorers=scorers,
        measures=measures,
        perturbations=_perturbations(values, where),
        collection=collection,
        strategies=strategies,
        encoders=tuple(encoders),
    )


def load_experiment(path: Path) -> ExperimentConfig:
    """The experiment of the TOML file ``path``."""
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ExperimentConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_experiment(values, str(path))
