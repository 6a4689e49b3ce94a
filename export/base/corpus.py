"""Training text: the user's data file or a default corpus, and the held-out split.

Formats (one example per line or row):

* ``.txt``: one text a line.
* ``.jsonl``: objects with ``text``, optional ``text_pair``, optional ``label``.
* ``.csv`` / ``.tsv``: a header row; a ``text`` column (else ``sentence``/``content``, else the
  first column), optional ``text_pair`` and ``label`` columns.

Empty lines are skipped silently; malformed rows are skipped and reported by line number. A
file with no usable row is an error. The default corpus needs no download: ``english-v1``, 34,584
English texts in five genres (dictionary definitions, usage examples, technical documentation,
quotations, humour) shipped with the package (``export/base/data``: how it was built, and the
licence of each source, are written beside it), identical on every machine.

The held-out split is drawn once, by a seeded permutation of the de-duplicated texts, and is
never trained on: every quality number comes from it. A corpus can also name one genre that is
held out whole (the default corpus: ``quotations``): none of its texts is trained on, and quality is
reported on it beside the in-domain held-out split, so a student that only learned the other
genres shows it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from export.base.errors import CompressError
from export.base.records import FileRef

# A label is a class name or id for classifiers, or one tag per word for token classifiers.
Label = Union[str, int, list[Union[str, int]]]

DATA_FORMATS = (".txt", ".jsonl", ".csv", ".tsv")
TEXT_COLUMNS = ("text", "sentence", "content")
DEFAULT_CORPUS_NAME = "default-corpus"
DEFAULT_CORPUS_FILE = Path(__file__).with_name("data") / "english-v1.jsonl.gz"
DEFAULT_CORPUS_SHA256 = "a92d5cda9869d7352680c11e80874bdcda62179fb007307ba9a118da49234942"
CROSS_DOMAIN_GENRE = "quotations"

HELD_OUT_FRACTION = 0.05
HELD_OUT_MIN = 64
HELD_OUT_MAX = 1000
MAX_RECORD_CHARS = 1 << 20  # one JSONL record; a training text is a few hundred characters
MIN_EXAMPLES = 10

_BAD_ROWS_SHOWN = 10


@dataclass(frozen=True)
class Example:
    """One training or held-out example."""

    text: str
    text_pair: str | None = None
    label: Label | None = None
    genre: str | None = None  # the source or genre it came from (a JSONL ``genre`` field)


@dataclass
class Corpus:
    """Examples read from one source, with what was skipped and why."""

    examples: list[Example]
    source: str  # a file path, or DEFAULT_CORPUS_NAME
    description: str
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    cross_domain: str | None = None  # a genre held out whole: never trained on, scored on its own

    @property
    def has_labels(self) -> bool:
        return any(example.label is not None for example in self.examples)

    @property
    def sha256(self) -> str:
        """Content hash of the examples (identifies the default corpus, which has no single file)."""
        digest = hashlib.sha256()
        for example in self.examples:
            # The genre decides the cross-domain split, so it is part of what was trained on.
            fields = [example.text, example.text_pair, example.label] + ([example.genre] if example.genre else [])
            digest.update(json.dumps(fields).encode())
        return digest.hexdigest()

    def bad_rows_message(self) -> str | None:
        """One line naming the skipped rows, or None when every row was usable."""
        if not self.bad_rows:
            return None
        shown = "; ".join(f"line {line}: {reason}" for line, reason in self.bad_rows[:_BAD_ROWS_SHOWN])
        more = len(self.bad_rows) - _BAD_ROWS_SHOWN
        suffix = f"; and {more} more" if more > 0 else ""
        return f"skipped {len(self.bad_rows)} bad row(s) in {self.source}: {shown}{suffix}"


@dataclass(frozen=True)
class Split:
    """The seeded train / held-out partition of a corpus."""

    train: list[Example]
    held_out: list[Example]
    seed: int
    cross_domain: list[Example] = field(default_factory=list)  # a whole genre, never trained on
    cross_domain_genre: str | None = None


def load_corpus(path: str | Path | None) -> Corpus:
    """Read ``path`` (a data file), or build the default corpus when ``path`` is None."""
    if path is None:
        return default_corpus()
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in DATA_FORMATS:
        raise CompressError(f"{path}: unsupported data format {suffix or '(no extension)'!r}; "
                            f"use one of {', '.join(DATA_FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompressError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_delimited, ".tsv": _read_delimited}[suffix]
    try:
        examples, bad_rows = reader(text, "\t" if suffix == ".tsv" else ",")
    except CompressError as exc:
        raise CompressError(f"{path}: {exc}") from None
    corpus = Corpus(examples, str(path), f"{path.name} ({len(examples)} examples)", bad_rows)
    if not examples:
        detail = f": {corpus.bad_rows_message()}" if bad_rows else ""
        raise CompressError(f"{path}: no usable examples{detail}")
    return corpus


def _read_txt(text: str, _: str) -> tuple[list[Example], list[tuple[int, str]]]:
    return [Example(line.strip()) for line in text.splitlines() if line.strip()], []


def _read_jsonl(text: str, _: str) -> tuple[list[Example], list[tuple[int, str]]]:
    examples: list[Example] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_CHARS:
            bad.append((number, f"over {MAX_RECORD_CHARS:,} characters"))
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append((number, "not valid JSON"))
            continue
        except RecursionError:
            bad.append((number, "nested too deeply"))
            continue
        if not isinstance(row, dict):
            bad.append((number, "not a JSON object"))
            continue
        problem = _check_row(row.get("text"), row.get("text_pair"), row.get("label"))
        genre = row.get("genre")
        if not problem and genre is not None and not isinstance(genre, str):
            problem = "genre is not a string"
        if problem:
            bad.append((number, problem))
            continue
        examples.append(Example(row["text"].strip(), _clean_pair(row.get("text_pair")), row.get("label"),
                                genre.strip() or None if genre is not None else None))
    return examples, bad


def _read_delimited(text: str, delimiter: str) -> tuple[list[Example], list[tuple[int, str]]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header_row = next(iter(_rows(reader)), None)
    if header_row is None:
        return [], []
    header = [name.strip().lower() for name in header_row]
    text_column = next((header.index(name) for name in TEXT_COLUMNS if name in header), 0)
    pair_column = header.index("text_pair") if "text_pair" in header else None
    label_column = header.index("label") if "label" in header else None
    examples: list[Example] = []
    bad: list[tuple[int, str]] = []
    for row in _rows(reader):
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            bad.append((number, f"{len(row)} columns, the header has {len(header)}"))
            continue
        label: Label | None = None
        if label_column is not None and row[label_column].strip():
            raw = row[label_column].strip()
            # A token classifier's tags are space-separated in one cell.
            label = raw.split() if " " in raw else _maybe_int(raw)
        pair = row[pair_column] if pair_column is not None else None
        problem = _check_row(row[text_column], pair, label)
        if problem:
            bad.append((number, problem))
            continue
        examples.append(Example(row[text_column].strip(), _clean_pair(pair), label))
    return examples, bad


def _rows(reader: Any) -> Iterable[list[str]]:
    """The reader's rows; a field over csv's limit (128 KiB) is one error naming the line, not a traceback."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CompressError(f"line {reader.line_num}: {exc} (a quote left open, or the wrong delimiter?)") from None


def _check_row(text: object, pair: object, label: object) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "missing or empty text"
    if pair is not None and not isinstance(pair, str):
        return "text_pair is not a string"
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int, list))):
        return "label is not a class name, a class id or a list of tags"
    if isinstance(label, list) and not all(isinstance(tag, (str, int)) for tag in label):
        return "label list holds something other than tag names or ids"
    return None


def _clean_pair(pair: object) -> str | None:
    return pair.strip() if isinstance(pair, str) and pair.strip() else None


def _maybe_int(text: str) -> str | int:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


# ---------------------------------------------------------------------------------------------
# The default corpus


def default_corpus() -> Corpus:
    """``english-v1``: the shipped multi-genre English corpus, the same bytes on every machine.

    Nothing that happens to be installed (Debian's wordnet-base once was read at run time) changes
    it; a file that does not match its recorded sha256 is a damaged install, not a new corpus.
    """
    path = DEFAULT_CORPUS_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CompressError(f"the default corpus {path} cannot be read ({exc.strerror}); reinstall compress") from None
    if hashlib.sha256(raw).hexdigest() != DEFAULT_CORPUS_SHA256:
        raise CompressError(f"the default corpus {path} does not match its sha256; reinstall compress")
    examples, bad = _read_jsonl(gzip.decompress(raw).decode("utf-8"), "")
    if bad or not examples:
        raise CompressError(f"the default corpus {path} has unreadable rows; reinstall compress")
    counts: dict[str, int] = {}
    for example in examples:
        counts[str(example.genre)] = counts.get(str(example.genre), 0) + 1
    genres = ", ".join(f"{genre} {count}" for genre, count in counts.items())
    return Corpus(examples, DEFAULT_CORPUS_NAME,
                  f"english-v1 ({len(examples)} English texts: {genres}; {CROSS_DOMAIN_GENRE} held out whole)",
                  cross_domain=CROSS_DOMAIN_GENRE)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# Lines of example code, shell sessions and grammar productions inside the documentation.
_CODE_LINE = re.compile(
    r"^\s*(>>>|\.\.\.(\s|$)|[$#@]|[\w.\[\]'\"]+\s*[-+*/|&]?=\s|"
    r"(class|def|for|if|elif|else|while|with|try|except|import|from|return|print)\b.*[:)]\s*$)|::=|^\s*[{}\])]"
)
_FOOTNOTE = re.compile(r"^\[\d+\]\s*")


def python_docs_texts(min_chars: int = 25, max_chars: int = 400) -> Iterable[str]:
    """Sentences and short passages of prose from ``pydoc_data.topics``.

    Every other paragraph of prose is kept as single sentences; the rest are packed into
    passages of consecutive sentences (up to ``max_chars``), so the corpus has a spread of
    lengths. No sentence appears in two texts, so the held-out split cannot leak into training.
    Code examples, grammar productions and headings are skipped.
    """
    from pydoc_data.topics import topics

    paragraph_index = 0
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.strip("\n").splitlines()
            if not lines or any(_CODE_LINE.search(line) for line in lines):
                continue
            if set(lines[-1].strip()) <= set("*=-~^"):  # a heading and its underline
                continue
            prose = _FOOTNOTE.sub("", " ".join(" ".join(lines).split()))
            sentences = [s for s in _SENTENCE_END.split(prose) if min_chars <= len(s) <= max_chars and s.count(" ") >= 3]
            paragraph_index += 1
            if paragraph_index % 2:
                yield from sentences
                continue
            passage = ""
            for sentence in sentences:
                if passage and len(passage) + 1 + len(sentence) > max_chars:
                    yield passage
                    passage = ""
                passage = f"{passage} {sentence}" if passage else sentence
            if passage:
                yield passage


# ---------------------------------------------------------------------------------------------
# The held-out split


def held_out_size(n: int) -> int:
    """How many of ``n`` unique examples are held out: 5 %, at least 64 (or a fifth), at most 1000."""
    return max(2, min(HELD_OUT_MAX, max(round(HELD_OUT_FRACTION * n), min(HELD_OUT_MIN, n // 5))))


def default_split(seed: int = 0) -> Split:
    """The default corpus split as distillation splits it: its cross-domain genre taken out first."""
    corpus = default_corpus()
    return split_corpus(corpus.examples, seed, cross_domain=corpus.cross_domain)


def split_corpus(examples: Sequence[Example], seed: int = 0, cross_domain: str | None = None) -> Split:
    """A deterministic, seeded train / held-out split; duplicates are dropped first.

    Dropping exact duplicates before splitting guarantees that no held-out text is ever trained on.
    ``cross_domain`` names a genre taken out before the split: up to ``HELD_OUT_MAX`` of its texts
    (seeded) are the cross-domain set, and none of them is trained on or in the in-domain split.
    """
    import numpy as np

    unique: list[Example] = []
    seen: set[tuple[str, str | None]] = set()
    for example in examples:
        key = (example.text, example.text_pair)
        if key not in seen:
            seen.add(key)
            unique.append(example)
    outside: list[Example] = []
    if cross_domain is not None:
        outside = [e for e in unique if e.genre == cross_domain]
        unique = [e for e in unique if e.genre != cross_domain]
        if outside:
            picked = np.random.default_rng(seed).permutation(len(outside))[:HELD_OUT_MAX]
            outside = [outside[i] for i in sorted(picked.tolist())]
    if len(unique) < MIN_EXAMPLES:
        raise CompressError(f"need at least {MIN_EXAMPLES} distinct examples to train and hold some out; "
                            f"got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_held = held_out_size(len(unique))
    held = sorted(order[:n_held].tolist())
    train = sorted(order[n_held:].tolist())
    return Split([unique[i] for i in train], [unique[i] for i in held], seed, outside,
                 cross_domain if outside else None)


def pin_training_data(data: Path | None, inputs: dict[str, FileRef], params: dict[str, Any]) -> None:
    """Pin the training data in a distill stage's plan: the user's file by sha256, or the default corpus's.

    Every family's distill stage calls this, so a changed default corpus re-runs distillation for any of them.
    """
    if data is not None:
        inputs["data"] = FileRef.of(Path(data))
    else:
        params["data"] = DEFAULT_CORPUS_NAME
        params["default_corpus_sha256"] = default_corpus().sha256
