"""Every case of the hostile-input corpus: exit 2, one line that says what is wrong, nothing left behind."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_onnx, real_sentences
from tests.hostile_inputs import CASES


def _tar_gz(path: Path, members: list[tuple[str, bytes | None, bytes, str]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o644
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buffer.getvalue()))


def _profile(ws: Path, name: str, edit) -> None:
    data = yaml.safe_load(load_profile("host").source.read_text())
    data.update(name=f"mine-{name}", aliases=[])
    edit(data)
    (ws / f"{name}.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    ws = tmp_path_factory.mktemp("hostile")
    tiny = build_tiny_onnx(ws / "tiny.onnx")
    build_tiny_onnx(ws / "other.onnx", hidden=24)
    (ws / "folder").mkdir()
    (ws / "garbage.onnx").write_bytes(b"\x08\x07\xff\xff not a protobuf \x00" * 8)
    (ws / "empty.onnx").write_bytes(b"")
    np.save(ws / "inputs.npy", np.zeros((1, 4), dtype=np.int64))
    (ws / "texts.txt").write_text("\n".join(real_sentences(60)) + "\n")
    (ws / "afile").write_text("a file where a folder is wanted\n")
    (ws / "huge.yaml").write_text("# padding\n" * 20_000)
    _profile(ws, "bad-regex", lambda d: d["hardware"].update(cpu={"cores": 2, "model_pattern": "[unclosed"}))
    _profile(ws, "unknown-key", lambda d: d.update(turbo=True))
    _profile(ws, "negative", lambda d: d["budgets"].update(model_size_mb=-3))
    impostor = yaml.safe_load(load_profile("host").source.read_text())
    (ws / "impostor.yaml").write_text(yaml.safe_dump(impostor))  # calls itself "host"
    (ws / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (ws / "list.yaml").write_text("- a\n- b\n")
    (ws / "python-tag.yaml").write_text("!!python/object/apply:os.system ['touch pwned']\n")

    bench = run_cli(["bench", str(tiny), "--runs", "3", "--warmup", "0", "--output", str(ws / "bench.json")])
    assert bench.exit_code == 0, bench.stderr
    report = json.loads((ws / "bench.json").read_text())
    (ws / "list.json").write_text("[1, 2]")
    (ws / "kind-unknown.json").write_text(json.dumps({**report, "kind": "telemetry"}))
    (ws / "future.json").write_text(json.dumps({**report, "schema_version": 99}))
    for name, section, key, value in (("negative-latency", "latency", "p95_ms", -1.0),
                                      ("nan-latency", "latency", "p50_ms", float("nan")),
                                      ("inf-memory", "memory", "session_peak_mb", float("inf")),
                                      ("negative-size", "model", "size_mb", -0.5)):
        forged = json.loads(json.dumps(report))
        forged[section][key] = value
        (ws / f"{name}.json").write_text(json.dumps(forged))
    (ws / "quality-empty.json").write_text(json.dumps({"metric": "mean_cosine"}))
    (ws / "quality-word.json").write_text(json.dumps({"teacher_agreement": "high", "metric": "mean_cosine"}))
    (ws / "quality-inf.json").write_text('{"teacher_agreement": Infinity, "metric": "mean_cosine"}')

    (ws / "not-tar.tar.gz").write_bytes(gzip.compress(b"plain text, not a tar stream" * 40))
    _tar_gz(ws / "empty.tar.gz", [])
    _tar_gz(ws / "dotdot.tar.gz", [("top/../../escaped.txt", b"x", tarfile.REGTYPE, "")])
    _tar_gz(ws / "absolute.tar.gz", [(str(ws / "absolute.txt"), b"x", tarfile.REGTYPE, "")])
    _tar_gz(ws / "symlink.tar.gz", [("top/link", None, tarfile.SYMTYPE, "/etc/passwd")])
    _tar_gz(ws / "two-tops.tar.gz", [("a", None, tarfile.DIRTYPE, ""), ("b", None, tarfile.DIRTYPE, "")])
    _tar_gz(ws / "no-manifest.tar.gz", [("top/model/x.txt", b"x", tarfile.REGTYPE, "")])

    shutil.copytree(tiny_encoder, ws / "encoder")
    truncated = Path(shutil.copytree(tiny_encoder, ws / "truncated-teacher"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (ws / "huge-vocab.json").write_text(json.dumps({"layers": 1, "vocab_size": 10**12}))
    (ws / "deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    (ws / "genre.jsonl").write_text("".join(json.dumps({"text": text, "genre": {"nested": 1}}) + "\n"
                                            for text in real_sentences(20)))
    (ws / "huge-field.csv").write_text('text,label\n"' + "x" * 200_000 + '",1\n')
    (ws / "broken-run").mkdir()
    (ws / "broken-run" / "run.json").write_text("{not json")
    assert run_cli(["keys", "new", str(ws / "existing")]).exit_code == 0
    return ws


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("argv, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_hostile_input_is_exit_2_in_one_line_and_leaves_nothing(workspace: Path, argv: list[str],
                                                                 fragment: str) -> None:
    before = _tree(workspace)
    result = run_cli([arg.replace("{ws}", str(workspace)) for arg in argv])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stdout[-400:], result.stderr[-400:])
    # The error is one line, and the last: what came before is progress the run printed on its way.
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[-1], lines[-1]
    assert _tree(workspace) == before  # no run directory, no temporary file, nothing half-written
    assert not Path("pwned").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"board: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    (b"board: &loop {address: *loop}\n", "not allowed"),
    (b"board: [unclosed\n", "not valid YAML"),
    (b"board:\n  address: \xff\xfe\n", "not UTF-8"),
    (b"# padding\n" * 20_000, "a devices file is a few kB"),
    (b"board: {address: 'ssh://-oProxyCommand=touch pwned'}\n", "ssh://[user@]host[:port]"),
    (b"board: {address: 'ssh://b', python: [1]}\n", "python must be a string"),
], ids=["python-tag", "self-reference", "invalid", "not-utf8", "huge", "dash-address", "wrong-type"])
def test_a_hostile_devices_file_is_exit_2_in_one_line(content: bytes, fragment: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build_tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "devices.yaml").write_bytes(content)
    before = _tree(tmp_path)
    result = run_cli(["bench", "tiny.onnx", "--on", "board", "--runs", "2"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert _tree(tmp_path) == before and not (tmp_path / "pwned").exists()
