"""Text and Markdown tables from a result (the JSON dict written by the run).

Columns: forward and forward+backward medians with [min-max]; peer/ours = peer median / our
median (> 1: we are faster); peak MiB above the inputs (memory probe); |dL|/L = relative loss
difference to the POT reference ("!" above the 1e-4 tolerance); |dG|/|G| = max relative
gradient difference to it. Below each table: the floor, and the median minor page faults per
timed call (a fresh page costs ~3 us to touch here; the floor counts none).
"""

from __future__ import annotations

from typing import Any

from .agreement import TOLERANCE

# Median and fastest call of a rate probe further apart than this: the floor is unreliable.
BUSY_RATE_SPREAD = 1.5
# Other processes using more than this share of the cores: the times are unreliable.
BUSY_SHARE = 0.10

HEADER = ("implementation", "fwd median [min-max]", "fwd+bwd median [min-max]",
          "peer/ours fwd", "peer/ours f+b", "peak MiB", "|dL|/L", "|dG|/|G|")
MARKDOWN_HEADER = ("workload", "implementation", "fwd", "fwd+bwd", "peer/ours fwd",
                   "peer/ours fwd+bwd", "peak MiB", r"\|dL\|/L", r"\|dG\|/\|G\|")


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _timing(t: dict[str, Any] | None, spread: bool = True) -> str:
    if t is None:
        return "-"
    if not spread or t["repeats"] == 1:
        return seconds(t["median"]) + (" (1 run)" if t["repeats"] == 1 else "")
    return f"{seconds(t['median'])} [{seconds(t['min'])}-{seconds(t['max'])}]"


def _ratio(r: dict[str, Any], mode: str) -> str:
    if r["name"] == "ours-torch":
        return "1 (ours)" if r[mode] else "-"
    value = r["ratio"].get(mode)
    return "-" if value is None else f"{value:.3g}x"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _loss_diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}" + ("!" if value > TOLERANCE else "")


def _row(r: dict[str, Any], w: dict[str, Any], spread: bool = True) -> list[str]:
    is_reference = bool(w["reference"]) and w["reference"].get("implementation") == r["name"]
    agreement = (["(ref)", "(ref)"] if is_reference else
                 [_loss_diff(r["loss_rel_diff"]), _number(r["grad_rel_diff"], ".1e")])
    return [r["name"], _timing(r["fwd"], spread), _timing(r["fwdbwd"], spread),
            _ratio(r, "fwd"), _ratio(r, "fwdbwd"), _number(r["peak_mib"], ".0f"), *agreement]


def load_line(load: dict[str, Any]) -> str:
    def avg(v):
        return "n/a" if v is None else "/".join(f"{x:.2f}" for x in v)

    line = f"load avg {avg(load['loadavg_before'])} -> {avg(load['loadavg_after'])}"
    share = load["others_share"]
    if share is not None:
        line += f"; other processes used {share:.0%} of the cores while timing"
        if share > BUSY_SHARE:
            line += " (BUSY: 2-thread ops wait for descheduled threads, times unreliable)"
    return line


def floor_line(w: dict[str, Any]) -> str:
    f = w["floor"]
    r, bw = f["matmul_flops"], f["bandwidth"]
    ours = next((r for r in w["implementations"] if r["name"] == "ours-torch"), None)
    over = ours["over_floor"] if ours else {}
    text = (f"floor fwd {seconds(f['fwd_s'])}, fwd+bwd {seconds(f['fwdbwd_s'])} "
            f"(R {r['median'] / 1e9:.3g} GFLOP/s, BW {bw['median'] / 1e9:.3g} GB/s, "
            f"{f['tokens']})")
    if max(r["best"] / r["median"], bw["best"] / bw["median"]) > BUSY_RATE_SPREAD:
        text += (f" [busy machine: fastest calls gave R {r['best'] / 1e9:.3g} GFLOP/s, "
                 f"BW {bw['best'] / 1e9:.3g} GB/s]")
    if over:
        text += ("; ours/floor fwd " + _number(over.get("fwd"), ".2f") + "x, fwd+bwd "
                 + _number(over.get("fwdbwd"), ".2f") + "x")
    real = w.get("floor_real_tokens")
    if real:
        text += (f"; over the real tokens only: floor fwd {seconds(real['fwd_s'])}, fwd+bwd "
                 f"{seconds(real['fwdbwd_s'])}")
        if over:
            text += (", ours/floor fwd " + _number(over.get("fwd_real_tokens"), ".2f")
                     + "x, fwd+bwd " + _number(over.get("fwdbwd_real_tokens"), ".2f") + "x")
    return text


def faults_line(w: dict[str, Any]) -> str:
    """Median minor page faults per timed call, fwd / fwd+bwd, of each implementation."""
    def count(t):
        return "-" if t is None or "page_faults" not in t else f"{t['page_faults']:,.0f}"

    parts = [f"{r['name']} {count(r['fwd'])} / {count(r['fwdbwd'])}"
             for r in w["implementations"] if r["status"] == "ok"]
    return "page faults per call, fwd / fwd+bwd: " + ", ".join(parts)


def _notes(w: dict[str, Any]) -> list[str]:
    notes = [f"  {r['name']}: compile + first run: fwd {seconds(r['first_call_s'].get('fwd'))}, "
             f"fwd+bwd {seconds(r['first_call_s'].get('fwdbwd'))} (not in the times above)"
             for r in w["implementations"] if r["compiles"] and r["first_call_s"]]
    return notes + [f"  {r['name']}: {r['status']}" + (f" ({r['reason']})" if r["reason"] else "")
                    for r in w["implementations"] if r["status"] != "ok"]


RUN_LABELS = {
    "quick": "QUICK RUN (--quick): reduced workloads and repeats, no memory probes; "
             "not for comparison",
    "default": "DEFAULT RUN: W1-W3, W6-W9 with every peer, 3-10 repeats, no memory probes; "
               "the full set: python -m benchmarks --full",
}


def run_label(result: dict[str, Any]) -> str | None:
    """What kind of run ``result`` is, for its header; None for a full run."""
    mode = result.get("mode", "quick" if result["quick"] else "full")
    return RUN_LABELS.get(mode)


def text_table(result: dict[str, Any]) -> str:
    """The printed report: one block per workload."""
    lines = [label for label in (run_label(result),) if label]
    native = result.get("info", {}).get("native_cpu")
    if native:
        lines.append(native)
    for w in result["workloads"]:
        ref = w["reference"]["source"] if w["reference"] else "none"
        lines += ["", f"{w['name']}  {w['shape']}  ({w['stands_for']})",
                  f"{load_line(w['load'])}; reference: {ref}"]
        rows = [list(HEADER)] + [_row(r, w) for r in w["implementations"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
        lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
                  for row in rows]
        lines.append(floor_line(w))
        lines.append(faults_line(w))
        lines += _notes(w)
    if result["not_run"]:
        lines += ["", "not run: " + "; ".join(f"{k} ({v})" for k, v in result["not_run"].items())]
    return "\n".join(lines)


def markdown(result: dict[str, Any], plot_path: str) -> str:
    """The README's benchmark section: machine, versions, date, one table, the plot."""
    info = result["info"]
    m = info["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"Measured {info['date']} on {m['cpu']} ({m['cores']} cores, "
        f"{m['torch_threads']} threads), commit {info['git_commit']}, with `{info['command']}`.",
        f"Versions: {versions}.",
        "",
        f"Ours ran with the {info['native_cpu']}."
        if info.get("native_cpu") else "Native CPU loops: not recorded.",
        "",
        "Medians over interleaved repeats (min and max in the JSON); peer/ours > 1 means ours "
        "is faster; peak MiB is above the inputs, from a separate process; |dL|/L and "
        "|dG|/|G| are the relative differences of the loss and gradient to POT's float64 "
        "log-domain Sinkhorn. See [benchmarks/README.md](benchmarks/README.md).",
        "",
        "| " + " | ".join(MARKDOWN_HEADER) + " |",
        "|---" * len(MARKDOWN_HEADER) + "|",
    ]
    for w in result["workloads"]:
        for r in w["implementations"]:
            cells = _row(r, w, spread=False)
            if r["status"] != "ok":
                cells[1] = f"{r['status']}: {cells[1]}" if r["fwd"] else r["status"]
            lines.append(f"| {w['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    for w in result["workloads"]:
        lines.append(f"- **{w['name']}** ({w['shape']}): {floor_line(w)}; {load_line(w['load'])}; "
                     f"{faults_line(w)}.")
    lines += ["", f"![benchmark]({plot_path})"]
    return "\n".join(lines)
