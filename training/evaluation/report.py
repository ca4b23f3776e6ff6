"""Summaries and Markdown tables of CLIR results, with the high/low-resource gap.

A language's resource level is the amount of its text in CC-100, the pre-training corpus of
XLM-R on which multilingual-e5 is built (Conneau et al., ACL 2020, table 6):

* high (10 GiB or more): Finnish, Bulgarian, Lithuanian, Hindi, Indonesian, Arabic, Thai, and
  the Quran's Spanish, Russian, Chinese, Turkish, French and Swedish;
* low (under 2 GiB, or absent from CC-100): Swahili, Somali, Hausa, Amharic, Khmer, and Yoruba,
  Igbo, Zulu and Chichewa (absent);
* the others here (Bengali 8.4 GiB, Urdu 5.7 GiB, Georgian, Kazakh, Telugu, Tagalog) are in
  neither group.

gap = (mean over the high-resource languages) - (mean over the low-resource languages), per
measure, over the languages evaluated; a shrinking gap means the low-resource languages caught
up. Codes are the UDHR file codes (ISO 639-3; ``arb`` is Standard Arabic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..bitext.formats import lookup_language

HIGH_RESOURCE = ("fin", "bul", "lit", "hin", "ind", "arb", "tha", "spa", "rus", "zho", "tur",
                 "fra", "swe")  # fmt: skip
LOW_RESOURCE = ("swh", "som", "hau", "amh", "khm", "yor", "ibo", "zul", "nya")

TABLE_MEASURES = ("nDCG@10", "MRR", "P@1", "MAP")
Means = Mapping[str, Mapping[str, float]]  # language -> measure -> value


def _known(code: str) -> bool:
    try:
        lookup_language(code)
    except ValueError:
        return False
    return True


def language_label(code: str) -> str:
    """``"Swahili (swh)"`` for a language code, else (a collection's name) the code itself."""
    return f"{lookup_language(code).name} ({code})" if _known(code) else code


def resource_group(code: str) -> str:
    """``"high"``, ``"low"`` or ``"mid"`` for a language code; ``""`` for anything else."""
    if code in HIGH_RESOURCE or code in LOW_RESOURCE:
        return "high" if code in HIGH_RESOURCE else "low"
    return "mid" if _known(code) else ""


def _average(means: Means, codes: Sequence[str]) -> dict[str, float] | None:
    present = [code for code in codes if code in means]
    if not present:
        return None
    measures = next(iter(means.values()))
    return {m: sum(means[code][m] for code in present) / len(present) for m in measures}


def summarise(means: Means) -> dict:
    """Per-language means plus their averages over all / high / low languages and the gap."""
    high, low = _average(means, HIGH_RESOURCE), _average(means, LOW_RESOURCE)
    gap = None if high is None or low is None else {m: high[m] - low[m] for m in high}
    return {
        "per_language": {code: dict(values) for code, values in means.items()},
        "mean": _average(means, list(means)),
        "high_resource": high,
        "low_resource": low,
        "gap": gap,
    }


def markdown_table(summaries: Mapping[str, dict], measure: str) -> str:
    """One row per language, then the averages and the gap; one column per system."""
    systems = list(summaries)
    languages = list(next(iter(summaries.values()))["per_language"])
    lines = [
        f"| {measure} | resource | " + " | ".join(systems) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in systems) + " |",
    ]

    def row(label: str, group: str, values: list[float | None]) -> str:
        cells = ["" if value is None else f"{value:.3f}" for value in values]
        return f"| {label} | {group} | " + " | ".join(cells) + " |"

    for code in languages:
        values = [summaries[s]["per_language"][code][measure] for s in systems]
        lines.append(row(language_label(code), resource_group(code), values))
    for key, label in (
        ("mean", "**mean**"), ("high_resource", "mean high"), ("low_resource", "mean low"),
        ("gap", "**gap high − low**"),
    ):  # fmt: skip
        values = [(summaries[s][key] or {}).get(measure) for s in systems]
        if any(value is not None for value in values):
            lines.append(row(label, "", values))
    return "\n".join(lines)
