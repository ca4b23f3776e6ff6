"""The Khmer LibreOffice help aligned paragraph by paragraph with the English help.

Source: Debian ``libreoffice-help-km`` and ``libreoffice-help-en-us`` (MPL-2.0), unpacked with
``dpkg-deb -x``: ``usr/share/libreoffice/help/<lang>/text/<module>/**/<page>.html`` for ``lang``
``km`` and ``en-US``, the same pages in both. Every paragraph and heading carries an id that is
the same in both languages::

    <h2 id="hd_id3150808" dir="auto">ឈ្មោះ​ពុម្ព​អក្សរ​</h2>
    <p id="par_id3148983" class="paragraph" dir="auto">Inserts a new table.</p>

A unit is an element whose id starts with ``par_id`` (paragraphs) or ``hd_id`` (headings); its
text is all the text inside it, whitespace-normalised (Khmer's zero-width spaces are kept). A pair
is the same id on the same page in both languages, id ``"<page path without .html>#<element id>"``
(e.g. ``swriter/main0110#par_idN105B8``), group = the module, the first folder under ``text/``
(``sbasic``, ``scalc``, ``schart``, ``sdatabase``, ``sdraw``, ``shared``, ``simpress``, ``smath``,
``swriter``). Left out and counted: units whose Khmer text has no Khmer letter (left untranslated,
in English), units empty on either side (e.g. a placeholder for embedded text), a repeated id on
a page (the first is kept), ids or pages missing in English.
"""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from ..bitext.udhr import normalise_whitespace
from .aligned import AlignedPair, ParallelCorpus
from .cache import libreoffice_help_dir

LANGUAGE = "km"
HELP_LANGUAGE = "km"
ENGLISH_HELP = "en-US"
UNIT_ID_PREFIXES = ("par_id", "hd_id")
KHMER_LETTERS = re.compile("[\u1780-\u17ff]")
_VOID_TAGS = frozenset(
    "area base br col embed hr img input link meta param source track wbr".split()
)


class _UnitParser(HTMLParser):
    """Collects ``(id, text)`` of the unit elements in document order; text inside a nested unit
    belongs to the innermost one."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, str | None, list[str]]] = []  # (tag, unit id, text pieces)
        self.units: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID_TAGS:
            return
        identifier = dict(attrs).get("id") or ""
        self.open.append((tag, identifier if identifier.startswith(UNIT_ID_PREFIXES) else None, []))

    def handle_endtag(self, tag):
        # Close up to the innermost open element of this tag (tolerates unclosed inner tags).
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth][0] == tag:
                for _, identifier, pieces in reversed(self.open[depth:]):
                    if identifier is not None:
                        self.units.append((identifier, normalise_whitespace("".join(pieces))))
                del self.open[depth:]
                return

    def handle_data(self, data):
        for _, identifier, pieces in reversed(self.open):
            if identifier is not None:
                pieces.append(data)
                return


def read_units(page: Path) -> tuple[dict[str, str], int]:
    """``({unit id: text}, repeated ids)`` of one help page; a repeated id keeps its first text."""
    parser = _UnitParser()
    parser.feed(Path(page).read_text(encoding="utf-8"))
    parser.close()
    units: dict[str, str] = {}
    for identifier, text in parser.units:
        units.setdefault(identifier, text)
    return units, len(parser.units) - len(units)


def align_help(help_dir: Path) -> ParallelCorpus:
    """Pairs of every Khmer page under ``<help_dir>/km/text`` with its English page."""
    khmer_root = Path(help_dir) / HELP_LANGUAGE / "text"
    english_root = Path(help_dir) / ENGLISH_HELP / "text"
    pairs, notes = [], Counter()
    for khmer_page in sorted(khmer_root.rglob("*.html")):
        relative = khmer_page.relative_to(khmer_root)
        english_page = english_root / relative
        if not english_page.is_file():
            notes["pages without an english page"] += 1
            continue
        khmer, repeated = read_units(khmer_page)
        english, _ = read_units(english_page)
        notes["repeated ids on a page"] += repeated
        page = relative.with_suffix("").as_posix()
        for identifier, other in khmer.items():
            text = english.get(identifier)
            if text is None:
                notes["units without an english unit"] += 1
            elif not text or not other:
                notes["empty units"] += 1
            elif not KHMER_LETTERS.search(other):
                notes["untranslated units"] += 1
            else:
                pairs.append(AlignedPair(relative.parts[0], f"{page}#{identifier}", text, other))
    return ParallelCorpus("libreoffice", LANGUAGE, pairs, dict(notes))


def load_libreoffice(cache=None) -> ParallelCorpus:
    """The aligned Khmer–English help from the cache (or the system's installed help)."""
    return align_help(libreoffice_help_dir(cache))
