"""Draw the plot of a result JSON: time per workload per implementation, log scale.

``python -m benchmarks.plot [RESULT_JSON] [-o PNG]``: two panels (forward, forward+backward),
one group of bars per workload, one bar per implementation (median, with a min-max whisker), and
the workload's floor as a black line. Implementations without a time are left out of a group.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PANELS = (("fwd", "forward", "fwd_s"), ("fwdbwd", "forward + backward", "fwdbwd_s"))


def draw(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    workloads = result["workloads"]
    names = list(dict.fromkeys(r["name"] for w in workloads for r in w["implementations"]))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax, (mode, title, floor_key) in zip(axes, PANELS):
        for x, w in enumerate(workloads):
            for i, name in enumerate(names):
                r = next((r for r in w["implementations"] if r["name"] == name), None)
                t = r and r[mode]
                if not t:
                    continue
                pos = x - 0.4 + (i + 0.5) * width
                ax.bar(pos, t["median"], width, color=colours[name],
                       hatch="//" if r["status"] != "ok" else None)
                ax.vlines(pos, t["min"], t["max"], color="black", linewidth=0.8)
            ax.hlines(w["floor"][floor_key], x - 0.42, x + 0.42, color="black", linewidth=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)), [w["name"] for w in workloads])
        ax.set_title(f"{title} (hatched: stopped at the budget, one run)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (median, min-max)")
    handles = [Patch(color=colours[name], label=name) for name in names]
    handles.append(Line2D([], [], color="black", linewidth=2, label="floor"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    info = result["info"]
    label = "QUICK RUN - " if result["quick"] else ""
    fig.suptitle(f"{label}{info['machine']['cpu']}, {info['machine']['torch_threads']} threads, "
                 f"{info['date'][:10]}, eps 0.05, fixed iterations; medians, log scale")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parent / "benchmark.png")
    args = parser.parse_args(argv)
    print(draw(json.loads(args.result.read_text()), args.output))


if __name__ == "__main__":
    main()
