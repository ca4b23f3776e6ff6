"""PNG plots of the aggregated results (:mod:`.aggregate`): one panel per encoder (rows) and
scorer (columns), a point per strategy at the mean over seeds, error bars at ± one sample
standard deviation, the strategies side by side within each group of the x axis.

* ``<measure>-by-language.png``: the clean score of every strategy, per language and their mean;
* ``gap.png``: the high - low-resource gap of the clean score per strategy (lower: the
  low-resource languages are closer to the high-resource ones);
* ``robustness-drop.png``: the drop (clean - perturbed) per strategy and perturbation, averaged
  over the languages it applies to.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..evaluation.report import language_label
from ..evaluation.robustness import CLEAN
from .aggregate import Row


def plotting_unavailable() -> str | None:
    """Why :func:`write_plots` cannot draw here (matplotlib is not installed), or None."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out matplotlib
        found = False
    if found:
        return None
    return ("matplotlib is not installed, so no plots are drawn (the tables are); install it "
            "(pip install matplotlib, or the package's [bench] or [dev] extra) and run the "
            "command again: finished runs are kept, only the plots are added")  # fmt: skip


def _points(ax, labels: Sequence[str], series: Mapping[str, Sequence[Row | None]]) -> None:
    """A group per x label, in it a point per series (series name -> its row per group; None:
    no point)."""
    spread = 0.7 / len(series)
    for position, (name, found) in enumerate(series.items()):
        offset = (position - (len(series) - 1) / 2) * spread
        shown = [(group + offset, row) for group, row in enumerate(found) if row is not None]
        ax.errorbar(
            [x for x, _ in shown], [row.mean for _, row in shown],
            yerr=[row.std or 0.0 for _, row in shown], fmt="o", capsize=3, label=name,
        )  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    for boundary in range(1, len(labels)):
        ax.axvline(boundary - 0.5, color="grey", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)


def write_plots(
    rows: Sequence[Row],
    directory: Path,
    *,
    encoders: Sequence[str],
    strategies: Sequence[str],
    scorers: Sequence[str],
    languages: Sequence[str],
    conditions: Sequence[str],
    measure: str,
) -> list[Path]:
    """Draw the plots of the module docstring for ``measure`` into ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    index = {(r.encoder, r.strategy, r.scorer, r.condition, r.quantity, r.language, r.measure): r
             for r in rows}  # fmt: skip
    perturbed = [condition for condition in conditions if condition != CLEAN]
    # (file, title, x labels, the (condition, quantity, language) of each x group, zero line)
    clean = [(CLEAN, "score", code) for code in (*languages, "mean")]
    figures = [
        (f"{measure}-by-language.png", f"{measure}, clean queries",
         [*map(language_label, languages), "mean"], clean, False),
        ("gap.png", f"high − low-resource gap in {measure}, clean queries",
         ["gap high − low"], [(CLEAN, "score", "gap")], True),
    ]  # fmt: skip
    if perturbed:
        figures.append(
            ("robustness-drop.png",
             f"drop in {measure} under perturbed queries (clean − perturbed, mean of languages)",
             perturbed, [(condition, "drop", "mean") for condition in perturbed], True)
        )  # fmt: skip
    written = []
    for name, title, labels, keys, zero_line in figures:
        panel_width = min(9.0, max(3.5, 2.0 + 0.12 * len(strategies) * len(labels)))
        figure, axes = pyplot.subplots(
            len(encoders), len(scorers), squeeze=False, sharey=True, layout="constrained",
            figsize=(1.8 + panel_width * len(scorers), 3.4 * len(encoders)),
        )  # fmt: skip
        for row_index, encoder in enumerate(encoders):
            for column, scorer in enumerate(scorers):
                series = {
                    strategy: [index.get((encoder, strategy, scorer, *key, measure))
                               for key in keys]
                    for strategy in strategies
                }  # fmt: skip
                ax = axes[row_index][column]
                _points(ax, labels, series)
                if zero_line:
                    ax.axhline(0.0, color="black", linewidth=0.6)
                ax.set_title(f"{encoder}, {scorer} scorer", fontsize="medium")
            axes[row_index][0].set_ylabel(measure)
        figure.suptitle(title)
        axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.savefig(directory / name, dpi=120)
        pyplot.close(figure)
        written.append(directory / name)
    return written
