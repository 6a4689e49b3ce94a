"""Training data: the file formats, their bad rows, the default corpus and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.base.corpus import (DEFAULT_CORPUS_FILE, DEFAULT_CORPUS_NAME, Example, default_corpus, held_out_size, load_corpus,
                                python_docs_texts, split_corpus)
from export.base.errors import CompressError


def test_txt_one_text_a_line_skips_empty_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("first text\n\n   \nsecond text\n")
    corpus = load_corpus(path)
    assert [e.text for e in corpus.examples] == ["first text", "second text"]
    assert corpus.bad_rows == [] and corpus.bad_rows_message() is None


def test_jsonl_reads_pairs_and_labels_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": "a good row", "label": "positive"}),
        "{not json",
        json.dumps({"text": "", "label": 1}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "pair row", "text_pair": "the other half", "label": 2}),
        json.dumps({"text": "bool label", "label": True}),
    ]) + "\n")
    corpus = load_corpus(path)
    assert corpus.examples == [Example("a good row", None, "positive"), Example("pair row", "the other half", 2)]
    assert [line for line, _ in corpus.bad_rows] == [2, 3, 4, 6]
    message = corpus.bad_rows_message()
    assert message is not None and "line 2: not valid JSON" in message and "line 3" in message


def test_csv_and_tsv_with_header_text_and_label_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('id,text,label\n1,"hello, world",pos\n2,second one,neg\n3,too,many,cells\n4,,neg\n')
    corpus = load_corpus(csv_path)
    assert [(e.text, e.label) for e in corpus.examples] == [("hello, world", "pos"), ("second one", "neg")]
    assert [line for line, _ in corpus.bad_rows] == [4, 5]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("sentence\tlabel\nsome words here\tB-X O O\nother\t3\n")
    tsv = load_corpus(tsv_path)
    assert tsv.examples[0].label == ["B-X", "O", "O"] and tsv.examples[1].label == 3


def test_a_file_without_usable_rows_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"nope": 1}\n[1]\n')
    with pytest.raises(CompressError, match=r"no usable examples.*line 1.*line 2"):
        load_corpus(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CompressError, match="no usable examples"):
        load_corpus(empty)


def test_missing_file_and_unknown_format_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="not found"):
        load_corpus(tmp_path / "missing.txt")
    other = tmp_path / "d.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(CompressError, match=r"unsupported data format.*\.txt"):
        load_corpus(other)


def test_the_default_corpus_is_the_shipped_multi_genre_english_set() -> None:
    corpus = default_corpus()
    assert corpus.source == DEFAULT_CORPUS_NAME and corpus.cross_domain == "quotations"
    texts = [e.text for e in corpus.examples]
    assert len(texts) == 34_584 and len(set(texts)) == len(texts)
    genres = {e.genre for e in corpus.examples}
    assert genres == {"definitions", "usage", "technical", "quotations", "humour"}
    assert not any(t.lstrip().startswith(">>>") or "::=" in t for t in texts)
    lengths = sorted(len(t) for t in texts)
    assert lengths[len(lengths) // 10] < 50 < lengths[9 * len(lengths) // 10]  # short sentences and passages
    # The same bytes everywhere: Python's documentation is one genre of it, whatever else is installed.
    technical = {e.text for e in corpus.examples if e.genre == "technical"}
    assert technical == set(python_docs_texts())
    assert (DEFAULT_CORPUS_FILE.parent / "SOURCES.md").read_text().count("licence") >= 3


def test_a_damaged_default_corpus_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.base.corpus as module

    damaged = tmp_path / "english-v1.jsonl.gz"
    damaged.write_bytes(DEFAULT_CORPUS_FILE.read_bytes()[:-10])
    monkeypatch.setattr(module, "DEFAULT_CORPUS_FILE", damaged)
    with pytest.raises(CompressError, match="does not match its sha256; reinstall"):
        default_corpus()


def test_the_cross_domain_genre_never_leaks_into_training() -> None:
    corpus = default_corpus()
    split = split_corpus(corpus.examples, cross_domain=corpus.cross_domain)
    quotations = {e.text for e in corpus.examples if e.genre == "quotations"}
    assert split.cross_domain_genre == "quotations" and len(split.cross_domain) == 1000
    assert {e.text for e in split.cross_domain} <= quotations
    assert not quotations & {e.text for e in split.train} and not quotations & {e.text for e in split.held_out}
    assert {e.genre for e in split.train} == {"definitions", "usage", "technical", "humour"}
    # Seeded like the in-domain split, and the same examples whatever asks for it.
    assert split_corpus(corpus.examples, cross_domain="quotations").cross_domain == split.cross_domain
    # A user's JSONL names genres the same way; a genre no row has leaves the split as it was.
    assert split_corpus(corpus.examples[:500], cross_domain="no-such-genre").cross_domain == []


def test_split_is_seeded_disjoint_and_deduplicated(sentences: list[str]) -> None:
    examples = [Example(s) for s in sentences] + [Example(sentences[0])]
    a, b = split_corpus(examples, seed=0), split_corpus(examples, seed=0)
    assert a.held_out == b.held_out and a.train == b.train
    held = {e.text for e in a.held_out}
    assert not held & {e.text for e in a.train}
    assert len(a.train) + len(a.held_out) == len(set(sentences))
    assert len(a.held_out) == held_out_size(len(set(sentences)))
    assert split_corpus(examples, seed=1).held_out != a.held_out
    with pytest.raises(CompressError, match="at least"):
        split_corpus([Example("one"), Example("two")])


def test_held_out_size_is_bounded() -> None:
    assert held_out_size(100) == 20 and held_out_size(2000) == 100 and held_out_size(1_000_000) == 1000


def test_the_corpus_fingerprint_follows_the_genres() -> None:
    """A text moved to another genre changes the cross-domain split, so it must re-run distillation."""
    from export.base.corpus import Corpus

    texts = [Example("one text", genre="usage"), Example("another text", genre="quotations")]
    moved = [Example("one text", genre="quotations"), Example("another text", genre="quotations")]
    plain = [Example("one text"), Example("another text")]
    assert Corpus(texts, "a", "a").sha256 != Corpus(moved, "a", "a").sha256 != Corpus(plain, "a", "a").sha256
