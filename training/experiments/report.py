"""The aggregated results (:mod:`.aggregate`) as a CSV file and Markdown tables.

``results.csv`` holds every row: encoder, strategy, scorer, condition (``clean`` or
``<kind>@<rate>``), quantity (``score`` or ``drop``), language (a code, or ``mean``, ``high``,
``low``, ``gap``), measure, mean, std (empty for one seed) and the number of seeds.

``results.md`` holds, per encoder and scorer and for each chosen measure, two tables with
"mean ± std" cells: the clean score per strategy and language with the mean and the
high/low-resource gap, and the drop under each perturbation per strategy and language (``n/a``
where it does not apply: code-switching without a dictionary).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..evaluation.report import language_label, resource_group
from ..evaluation.robustness import CLEAN
from .aggregate import Row


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(Row._fields)
        for row in rows:
            writer.writerow(["" if value is None else value for value in row])


def cell(row: Row | None) -> str:
    """``"0.781 ± 0.012"``; the mean alone for one seed; ``n/a`` without a row."""
    if row is None:
        return "n/a"
    return f"{row.mean:.3f}" if row.std is None else f"{row.mean:.3f} ± {row.std:.3f}"


def pipe_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _language_header(code: str) -> str:
    group = resource_group(code)
    return f"{language_label(code)}, {group}" if group else language_label(code)


def _tables(
    index: dict, key: tuple[str, str, str], strategies: Sequence[str],
    languages: Sequence[str], perturbed: Sequence[str],
) -> list[str]:  # fmt: skip
    """The clean and drop tables of one (encoder, scorer, measure) ``key``."""
    encoder, scorer, measure = key

    def get(strategy: str, condition: str, quantity: str, language: str) -> str:
        return cell(index.get((encoder, strategy, scorer, condition, quantity, language, measure)))

    header = ["strategy", *map(_language_header, languages), "mean", "gap high − low"]
    body = [
        [strategy, *(get(strategy, CLEAN, "score", code) for code in (*languages, "mean", "gap"))]
        for strategy in strategies
    ]
    title = f"### {measure}, clean queries ({encoder}, {scorer} scorer)"
    tables = [f"{title}\n\n{pipe_table(header, body)}"]
    if perturbed:
        header = ["strategy", "queries", *languages, "mean"]
        body = [
            [strategy, condition,
             *(get(strategy, condition, "drop", code) for code in (*languages, "mean"))]
            for strategy in strategies
            for condition in perturbed
        ]  # fmt: skip
        tables.append(
            f"### Drop in {measure}, clean − perturbed queries ({encoder}, {scorer} scorer)\n\n"
            + pipe_table(header, body)
        )
    return tables


def markdown_tables(
    rows: Sequence[Row],
    *,
    encoders: Sequence[str],
    strategies: Sequence[str],
    scorers: Sequence[str],
    languages: Sequence[str],
    conditions: Sequence[str],
    measures: Sequence[str],
) -> str:
    """The tables of the module docstring, in the orders given."""
    index = {(r.encoder, r.strategy, r.scorer, r.condition, r.quantity, r.language, r.measure): r
             for r in rows}  # fmt: skip
    perturbed = [condition for condition in conditions if condition != CLEAN]
    return "\n\n".join(
        table
        for encoder in encoders
        for scorer in scorers
        for measure in measures
        for table in _tables(index, (encoder, scorer, measure), strategies, languages, perturbed)
    )
