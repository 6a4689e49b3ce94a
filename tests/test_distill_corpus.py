"""Training data: the file formats, their bad rows, the default corpus and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.base.corpus import (DEFAULT_CORPUS_NAME, Example, default_corpus, held_out_size, load_corpus,
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


def test_default_corpus_is_real_prose_without_code() -> None:
    corpus = default_corpus()
    assert corpus.source == DEFAULT_CORPUS_NAME
    texts = [e.text for e in corpus.examples]
    assert len(texts) > 1500 and len(set(texts)) == len(texts)
    assert not any(t.lstrip().startswith(">>>") or "::=" in t for t in texts)
    assert sum(t[0].isupper() for t in texts) / len(texts) > 0.8
    lengths = sorted(len(t) for t in texts)
    assert lengths[len(lengths) // 10] < 80 < lengths[9 * len(lengths) // 10]  # sentences and passages


def test_the_default_corpus_is_python_s_own_prose_and_nothing_else() -> None:
    # Nothing that happens to be installed (Debian's wordnet-base once was read) may change it.
    assert {e.text for e in default_corpus().examples} == set(python_docs_texts())


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
