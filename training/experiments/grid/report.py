r"""The grid's report: ``results.csv``, ``significance.csv``, ``results.md`` and plots.

From the per-query measures of every finished run (:mod:`.runner`), for each scorer
(:data:`~.ranking.SCORERS`):

* ``results.csv`` (strategy, scorer, condition, quantity, language, measure, mean, std, seeds,
  queries): a task's score is the mean over seeds of the seed's mean over queries, with the
  sample standard deviation over seeds; ``drop`` = clean - perturbed; the groups ``high``,
  ``low`` (means over the ``[gap]`` tasks) and ``gap`` = high - low, per seed, likewise;
* ``significance.csv`` (strategy, baseline, language, measure, delta, ci_low, ci_high, queries,
  condition, scorer): the difference to each baseline with its 95% paired bootstrap interval
  (:mod:`.bootstrap`) per task, and for the groups and the gap; ``condition`` is ``clean``, a
  perturbation (the scores under it) or ``drop:<perturbation>`` (the difference of the drops:
  negative means the strategy loses less to the perturbation than the baseline);
* ``results.md``: these as Markdown tables; ``delta-vs-<baseline>-<scorer>.png``: the clean
  nDCG@10 differences with their intervals.

A condition that only some tasks have (code-switching, where a dictionary exists) has rows and
columns for those tasks alone, and the groups' rows only where every ``[gap]`` task has it (as
for runs not finished yet): a group is never a mean over a subset of its tasks.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from ...evaluation.robustness import CLEAN
from ..aggregate import mean_std
from ..report import pipe_table
from .bootstrap import interval, resample, resampled_means
from .config import GridConfig
from .ranking import MEASURES

TABLE_MEASURE = "nDCG@10"
GROUPS = ("high", "low", "gap")
DROP = "drop:"
Values = dict[tuple[str, str, str, str], torch.Tensor]  # (task, strategy, condition, measure)


def per_query_values(records: Iterable[Mapping]) -> dict[str, Values]:
    """scorer -> (task, strategy, condition, measure) -> (seeds, Q) float64, seeds in
    increasing order."""
    by_cell: dict[str, dict[tuple, dict[int, list[float]]]] = {}
    for record in records:
        run = record["run"]
        for scorer, conditions in record["metrics"].items():
            for condition, measures in conditions.items():
                for measure, values in measures.items():
                    key = (run["task"], run["strategy"], condition, measure)
                    by_cell.setdefault(scorer, {}).setdefault(key, {})[run["seed"]] = values
    return {
        scorer: {
            key: torch.tensor([seeds[s] for s in sorted(seeds)], dtype=torch.float64)
            for key, seeds in cells.items()
        }
        for scorer, cells in by_cell.items()
    }


def _conditions(grid: GridConfig) -> list[str]:
    return [CLEAN, *(p.name for p in grid.perturbations)]


def _has_groups(grid: GridConfig, tasks: Collection[str]) -> bool:
    """Whether the groups (high, low, gap) have a value: only if ``tasks`` (those with one)
    hold every task of ``[gap]``."""
    return bool(grid.high) and all(task in tasks for task in grid.high + grid.low)


def _quantity(values: Values, task: str, strategy: str, condition: str, measure: str):
    """(seeds, Q) of a score, or of a drop for ``drop:<perturbation>``; None if missing."""
    if condition.startswith(DROP):
        clean = values.get((task, strategy, CLEAN, measure))
        perturbed = values.get((task, strategy, condition[len(DROP) :], measure))
        return None if clean is None or perturbed is None else clean - perturbed
    return values.get((task, strategy, condition, measure))


def result_rows(grid: GridConfig, values: Values, scorer: str) -> list[dict]:
    rows = []
    quantities = [(c, "score") for c in _conditions(grid)]
    quantities += [(DROP + p.name, "drop") for p in grid.perturbations]
    for strategy in grid.strategies:
        for condition, quantity in quantities:
            for measure in MEASURES:
                per_task = {
                    task: _quantity(values, task, strategy, condition, measure)
                    for task in grid.tasks
                }
                per_task = {t: v.mean(dim=1) for t, v in per_task.items() if v is not None}
                cells = dict(per_task)
                seeds = {len(v) for v in per_task.values()}
                if _has_groups(grid, per_task) and len(seeds) == 1:
                    high = torch.stack([per_task[t] for t in grid.high]).mean(dim=0)
                    low = torch.stack([per_task[t] for t in grid.low]).mean(dim=0)
                    cells.update(high=high, low=low, gap=high - low)
                for language, per_seed in cells.items():
                    mean, std = mean_std(per_seed.tolist())
                    queries = (
                        values[(language, strategy, CLEAN, measure)].shape[1]
                        if language in per_task
                        else ""
                    )
                    rows.append(
                        dict(
                            strategy=strategy,
                            scorer=scorer,
                            condition=condition.removeprefix(DROP),
                            quantity=quantity,
                            language=language,
                            measure=measure,
                            mean=mean,
                            std=std,
                            seeds=len(per_seed),
                            queries=queries,
                        )
                    )
    return rows


def significance_rows(grid: GridConfig, values: Values, scorer: str) -> list[dict]:
    """The differences to the baselines, per task and group (see the module docstring)."""
    rows: list[dict] = []
    conditions = [*_conditions(grid), *(DROP + p.name for p in grid.perturbations)]
    indices = {}
    for number, task in enumerate(grid.tasks):
        sample = values.get((task, grid.strategies[0], CLEAN, MEASURES[0]))
        if sample is not None:
            indices[task] = resample(sample.shape[1], grid.bootstrap_samples, seed=number)
    for baseline in grid.baselines:
        for strategy in grid.strategies:
            if strategy == baseline:
                continue
            for condition in conditions:
                for measure in MEASURES:
                    deltas, resampled = {}, {}
                    for task in indices:
                        a = _quantity(values, task, strategy, condition, measure)
                        b = _quantity(values, task, baseline, condition, measure)
                        if a is None or b is None:
                            continue
                        difference = a.mean(dim=0) - b.mean(dim=0)
                        deltas[task] = float(difference.mean())
                        resampled[task] = resampled_means(difference, indices[task])
                    groups = {}
                    if _has_groups(grid, deltas):
                        high = torch.stack([resampled[t] for t in grid.high]).mean(dim=0)
                        low = torch.stack([resampled[t] for t in grid.low]).mean(dim=0)
                        groups = {
                            "high": (grid.high, high),
                            "low": (grid.low, low),
                            "gap": (grid.high + grid.low, high - low),
                        }
                    for task, delta in deltas.items():
                        rows.append(
                            _significance(
                                strategy,
                                baseline,
                                task,
                                measure,
                                delta,
                                resampled[task],
                                len(indices[task][0]),
                                condition,
                            )
                        )
                    for label, (tasks, draws) in groups.items():
                        high = statistics.fmean(deltas[t] for t in grid.high)
                        low = statistics.fmean(deltas[t] for t in grid.low)
                        delta = {"high": high, "low": low, "gap": high - low}[label]
                        queries = sum(len(indices[t][0]) for t in tasks)
                        rows.append(
                            _significance(
                                strategy, baseline, label, measure, delta, draws, queries, condition
                            )
                        )
    return rows


def _significance(strategy, baseline, language, measure, delta, draws, queries, condition):
    low, high = interval(draws)
    return dict(
        strategy=strategy,
        baseline=baseline,
        language=language,
        measure=measure,
        delta=delta,
        ci_low=low,
        ci_high=high,
        queries=queries,
        condition=condition,
    )


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (f"{v:.6f}" if isinstance(v, float) else "" if v is None else v)
                    for k, v in row.items()
                }
            )


def _score_cell(row: Mapping | None) -> str:
    if row is None:
        return "–"
    std = "" if row["std"] is None else f" ± {row['std']:.3f}"
    return f"{row['mean']:.3f}{std}"


def _delta_cell(row: Mapping | None) -> str:
    if row is None:
        return "–"
    mark = "**" if row["ci_low"] > 0 or row["ci_high"] < 0 else ""
    return f"{mark}{row['delta']:+.3f}{mark} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def _section(title: str, columns: Sequence[str], rows: dict[str, list[str]]) -> list[str]:
    body = [[label, *cells] for label, cells in rows.items()]
    return [f"### {title}", "", pipe_table(["strategy", *columns], body), ""]


def markdown(grid: GridConfig, results: Sequence[dict], significance: Sequence[dict]) -> str:
    """The tables of ``results.md``: scores per measure, differences to each baseline, and
    the robustness drops with their difference to the first baseline."""
    score = {
        (r["strategy"], r["condition"], r["quantity"], r["language"], r["measure"]): r
        for r in results
    }
    delta = {
        (r["strategy"], r["baseline"], r["condition"], r["language"], r["measure"]): r
        for r in significance
    }
    columns = [*grid.tasks, *(GROUPS if grid.high else ())]
    parts = []
    for measure in MEASURES:
        rows = {
            s: [_score_cell(score.get((s, CLEAN, "score", c, measure))) for c in columns]
            for s in grid.strategies
        }
        title = f"{measure}, clean queries (mean ± sd over seeds {list(grid.seeds)})"
        parts += _section(title, columns, rows)
    for baseline in grid.baselines:
        rows = {
            s: [_delta_cell(delta.get((s, baseline, CLEAN, c, TABLE_MEASURE))) for c in columns]
            for s in grid.strategies
            if s != baseline
        }
        title = (
            f"{TABLE_MEASURE}: difference to {baseline} [95% paired bootstrap CI over "
            "queries]; bold: the interval excludes 0"
        )
        parts += _section(title, columns, rows)
    baseline = grid.baselines[0]
    for perturbation in grid.perturbations:
        name = perturbation.name
        tasks = [task for task in grid.tasks if perturbation in grid.task_perturbations(task)]
        columns = [*tasks, *(GROUPS if _has_groups(grid, tasks) else ())]
        rows = {}
        for s in grid.strategies:
            drops = [_score_cell(score.get((s, name, "drop", c, TABLE_MEASURE))) for c in columns]
            if s != baseline:
                keys = [(s, baseline, DROP + name, c, TABLE_MEASURE) for c in columns]
                drops = [f"{cell} / {_delta_cell(delta.get(k))}" for cell, k in zip(drops, keys)]
            rows[s] = drops
        title = (
            f"{TABLE_MEASURE} lost to {name} queries (clean - perturbed) / its difference "
            f"to {baseline} (negative: more robust)"
        )
        parts += _section(title, columns, rows)
    return "\n".join(parts)


def _plot(grid: GridConfig, significance: Sequence[dict], baseline: str, path: Path) -> bool:
    from ..plots import plotting_unavailable

    if plotting_unavailable():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {
        (r["strategy"], r["language"]): r
        for r in significance
        if r["baseline"] == baseline and r["condition"] == CLEAN and r["measure"] == TABLE_MEASURE
    }
    strategies = [s for s in grid.strategies if s != baseline]
    figure, axis = plt.subplots(figsize=(1.2 * len(grid.tasks) + 3, 4))
    width = 0.8 / len(strategies)
    for number, strategy in enumerate(strategies):
        xs, ys, errors = [], [], [[], []]
        for position, task in enumerate(grid.tasks):
            row = rows.get((strategy, task))
            if row is None:
                continue
            xs.append(position + (number - (len(strategies) - 1) / 2) * width)
            ys.append(row["delta"])
            errors[0].append(row["delta"] - row["ci_low"])
            errors[1].append(row["ci_high"] - row["delta"])
        axis.errorbar(xs, ys, yerr=errors, fmt="o", markersize=3, capsize=2, label=strategy)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(range(len(grid.tasks)), grid.tasks, rotation=30, ha="right")
    axis.set_ylabel(f"{TABLE_MEASURE} − {baseline} (95% CI)")
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(grid: GridConfig, records: Sequence[Mapping], out_dir: Path) -> list[Path]:
    """Write the report of the finished ``records`` into ``out_dir``; the paths written."""
    out_dir = Path(out_dir)
    results, significance, sections = [], [], []
    for scorer, values in per_query_values(records).items():
        scored = result_rows(grid, values, scorer)
        compared = [{**row, "scorer": scorer} for row in significance_rows(grid, values, scorer)]
        results += scored
        significance += compared
        sections.append((scorer, scored, compared))
    written = []
    if results:
        _write_csv(out_dir / "results.csv", results)
        written.append(out_dir / "results.csv")
    if significance:
        _write_csv(out_dir / "significance.csv", significance)
        written.append(out_dir / "significance.csv")
    seconds = sum(sum(r["seconds"].values()) for r in records)
    header = (
        f"# Grid {grid.name}\n\n{len(records)} of {len(grid.runs)} runs finished "
        f"({seconds:.0f} s of training and evaluation; the cached states not counted).\n"
    )
    body = [
        f"## Scorer: {scorer}\n\n{markdown(grid, scored, compared)}"
        for scorer, scored, compared in sections
    ]
    (out_dir / "results.md").write_text(header + "\n" + "\n".join(body))
    written.append(out_dir / "results.md")
    for scorer, _, compared in sections:
        for baseline in grid.baselines:
            path = out_dir / f"delta-vs-{baseline}-{scorer}.png"
            if _plot(grid, compared, baseline, path):
                written.append(path)
    return written
