"""How ``english-v1.jsonl.gz``, the default training corpus, was made (run once; the file is shipped).

The corpus must be identical on every machine, so it is built here from fixed releases and
committed, not assembled at run time from whatever a machine has installed. Its genres, and
where each comes from (licences in SOURCES.md):

- ``definitions``: glosses of WordNet 3.0 (Debian ``wordnet-base`` 1:3.0-37), 12,000 drawn at random;
- ``usage``: the example sentences of WordNet 3.0's glosses, 12,000 drawn at random;
- ``technical``: the prose of Python's documentation (``pydoc_data.topics`` of Python 3.11.7);
- ``quotations``: fortune-mod's quotation files (Debian ``fortunes`` / ``fortunes-min`` 1:1.99.1-7.3:
  literature, wisdom, people, science, ...), one- to three-sentence entries;
- ``humour``: pyjokes 0.8.3's English jokes and fortune-mod's humorists and riddles.

    apt-get download wordnet-base fortunes fortunes-min && for d in *.deb; do dpkg-deb -x $d x; done
    pip download --no-deps pyjokes==0.8.3 && unzip -d pj pyjokes-0.8.3-py3-none-any.whl
    python export/base/data/build_english_corpus.py x pj

Rows are ``{"text": ..., "genre": ...}``, de-duplicated, in a seeded order; gzip's timestamp is
zero, so the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from pathlib import Path

OUT = Path(__file__).with_name("english-v1.jsonl.gz")
SEED = 0
WORDNET_DRAW = 12_000
QUOTATIONS = ("art", "education", "food", "fortunes", "goedel", "kids", "law", "literature", "love", "magic",
              "medicine", "miscellaneous", "news", "people", "pets", "platitudes", "politics", "science",
              "songs-poems", "sports", "tao", "wisdom", "work", "cookie")
HUMOUR = ("humorists", "riddles")
_WORDS = re.compile(r"[A-Za-z]")


def _ok(text: str, min_words: int = 4, max_chars: int = 400) -> bool:
    letters = len(_WORDS.findall(text))
    return len(text.split()) >= min_words and len(text) <= max_chars and letters >= 0.6 * len(text.replace(" ", ""))


def wordnet(root: Path) -> tuple[list[str], list[str]]:
    definitions, examples = [], []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / "usr/share/wordnet" / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" ") or "|" not in line:  # the licence header
                continue
            gloss = line.split("|", 1)[1].strip()
            quoted = re.findall(r'"([^"]+)"', gloss)
            definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            if _ok(definition):
                definitions.append(definition[0].upper() + definition[1:] + ".")
            examples += [q.strip() for q in quoted if _ok(q.strip())]
    return definitions, examples


def fortunes(root: Path, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        path = root / "usr/share/games/fortunes" / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [l.strip() for l in entry.strip("%\n").splitlines()
                     if l.strip() and not l.strip().startswith("--") and not l.strip().startswith("-- ")]
            text = " ".join(" ".join(lines).split())
            if _ok(text) and len(re.findall(r"[.!?](\s|$)", text)) <= 3 and "\t" not in text:
                out.append(text)
    return out


def pyjokes(root: Path) -> list[str]:
    sys.path.insert(0, str(root))
    from pyjokes.jokes_en import jokes_en  # type: ignore[import-not-found]

    return [j for j in jokes_en["all"] if _ok(j)]


def main(debian: Path, jokes: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from export.base.corpus import python_docs_texts

    rng = random.Random(SEED)
    definitions, usage = wordnet(debian)
    genres = {
        "definitions": rng.sample(sorted(set(definitions)), WORDNET_DRAW),
        "usage": rng.sample(sorted(set(usage)), WORDNET_DRAW),
        "technical": list(python_docs_texts()),
        "quotations": fortunes(debian, QUOTATIONS),
        "humour": pyjokes(jokes) + fortunes(debian, HUMOUR),
    }
    rows, seen = [], set()
    for genre, texts in genres.items():
        for text in texts:
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "genre": genre})
    rng.shuffle(rows)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    with OUT.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)
    counts = {g: sum(r["genre"] == g for r in rows) for g in genres}
    print(f"{OUT.name}: {len(rows)} texts {counts}, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
