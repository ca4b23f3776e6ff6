"""The UDHR declaration parser, the alignment and the committed bitext files."""

from __future__ import annotations

from pathlib import Path

import pytest

from optical_ops.training.bitext import udhr
from optical_ops.training.bitext.formats import DataFormatError
from optical_ops.training.bitext.udhr import (
    BitextPair,
    align_with_english,
    parse_declaration,
    read_bitext_tsv,
    write_bitext_tsv,
)

DATA_DIR = Path(udhr.__file__).parent.parent / "data" / "udhr"
COMMITTED = sorted(DATA_DIR.glob("eng-*.tsv"))

ENGLISH_HTML = """<!doctype html>
<html data-code="eng" data-iso6393="eng" dir="ltr" lang="en">
  <head><title>English</title></head>
  <body>
    <h1>Universal Declaration of Human Rights</h1>
    <header>
      <h2>Preamble</h2>
      <p>Whereas   recognition,</p>
      <p>Now, therefore,</p>
    </header>
    <article data-number="1">
      <h2>Article 1</h2>
      <p>All human beings are born free
         and equal &amp; in dignity.</p>
    </article>
    <article data-number="2">
      <h2>Article 2</h2>
      <ol>
        <li>
          <p>Everyone is <em>entitled</em>.</p>
        </li>
        <li>Furthermore,	no distinction.</li>
      </ol>
    </article>
    <article data-number="3">
      <h2>Article 3</h2>
      <p>Everyone has the right to life.</p>
      <p></p>
    </article>
  </body>
</html>
"""

OTHER_HTML = """<html data-code="hau_NG" data-iso6393="hau" lang="ha"><body>
<header><h2>Gabatarwa</h2><p>Kasancewa,</p></header>
<article data-number="1"><h2>Ka'ida ta 1</h2><p>Su dai 'yan.</p></article>
<article data-number="2"><h2>Ka'ida ta 2</h2><ol><li><p>Kowa.</p></li><li><p>Haka.</p></li></ol>
</article>
<article data-number="3"><h2>Ka'ida ta 3</h2><p>Kowa yana da hakkin rayuwa.</p></article>
</body></html>
"""


def test_parse_declaration_sections_and_paragraphs():
    english = parse_declaration(ENGLISH_HTML)
    assert english.iso6393 == "eng"
    assert english.sections == {
        0: ["Whereas recognition,", "Now, therefore,"],
        1: ["All human beings are born free and equal & in dignity."],
        2: ["Everyone is entitled.", "Furthermore, no distinction."],
        3: ["Everyone has the right to life."],
    }


def test_align_keeps_sections_with_equal_paragraph_counts():
    pairs = align_with_english(parse_declaration(ENGLISH_HTML), parse_declaration(OTHER_HTML))
    assert pairs == [
        BitextPair(1, 1, "All human beings are born free and equal & in dignity.", "Su dai 'yan."),
        BitextPair(2, 1, "Everyone is entitled.", "Kowa."),
        BitextPair(2, 2, "Furthermore, no distinction.", "Haka."),
        BitextPair(3, 1, "Everyone has the right to life.", "Kowa yana da hakkin rayuwa."),
    ]


def test_tsv_round_trip_normalises_whitespace(tmp_path):
    path = tmp_path / "eng-xyz.tsv"
    write_bitext_tsv([BitextPair(4, 1, "a\tb", "c\nd  e")], path)
    expected = "article\tparagraph\tenglish\tother\n4\t1\ta b\tc d e\n"
    assert path.read_text(encoding="utf-8") == expected
    assert read_bitext_tsv(path) == [BitextPair(4, 1, "a b", "c d e")]


def test_command_line_extracts_and_names_files_by_iso_code(tmp_path, capsys):
    source = tmp_path / "package" / "declaration"
    source.mkdir(parents=True)
    (source / "eng.html").write_text(ENGLISH_HTML, encoding="utf-8")
    (source / "hau_NG.html").write_text(OTHER_HTML, encoding="utf-8")
    udhr.main(["--source", str(tmp_path / "package"), "--out", str(tmp_path / "out"), "hau_NG"])
    assert len(read_bitext_tsv(tmp_path / "out" / "eng-hau.tsv")) == 4
    assert capsys.readouterr().out == "eng-hau: 4 pairs, 3 articles, 0 preamble pairs\n"


def test_committed_bitext_covers_the_required_languages():
    names = {path.name for path in COMMITTED}
    assert {"eng-swh.tsv", "eng-som.tsv", "eng-fin.tsv", "eng-hau.tsv", "eng-yor.tsv"} <= names


@pytest.mark.parametrize("path", COMMITTED, ids=[path.stem for path in COMMITTED])
def test_committed_bitext_is_well_formed(path):
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert all(line.count("\t") == 3 for line in lines[:-1])
    pairs = read_bitext_tsv(path)
    assert len(pairs) >= 40
    assert all(pair.english.strip() and pair.other.strip() for pair in pairs)
    assert all(pair.english != pair.other for pair in pairs)
    keys = [(pair.article, pair.paragraph) for pair in pairs]
    assert len(set(keys)) == len(keys)
    articles = {pair.article for pair in pairs}
    assert articles <= set(range(31))
    assert len(articles - {0}) >= 28
    for article in articles:
        numbers = sorted(p.paragraph for p in pairs if p.article == article)
        assert numbers == list(range(1, len(numbers) + 1))


HEADER = "article\tparagraph\tenglish\tother\n"


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("1\t1\tHello\n", 2, "expected 4 tab-separated fields, found 3"),
        ("1\t1\tHello\t \n", 2, "empty 'other' field"),
        ("1\t1\t\tJambo\n", 2, "empty 'english' field"),
        ("1\t1\ta\tb\none\t2\tc\td\n", 3, "'article' must be a non-negative integer, found 'one'"),
        ("1\t-2\ta\tb\n", 2, "'paragraph' must be a non-negative integer, found '-2'"),
        ("1\t1\ta\tb\n\n1\t1\tc\td\n", 4, "duplicate article 1 paragraph 1 (first on line 2)"),
    ],
)
def test_bitext_errors_name_file_and_line(tmp_path, body, line, fragment):
    path = tmp_path / "eng-swh.tsv"
    path.write_text(HEADER + body, encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        read_bitext_tsv(path)
    assert (caught.value.path, caught.value.line) == (str(path), line)
    assert f"{path}, line {line}: {fragment}" in str(caught.value)


def test_bitext_needs_the_udhr_header(tmp_path):
    path = tmp_path / "eng-swh.tsv"
    path.write_text("article\tparagraph\tenglish\tswahili\n1\t1\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 1: header has no column 'other'"):
        read_bitext_tsv(path)
