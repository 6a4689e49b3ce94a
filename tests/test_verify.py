"""`compress verify`: a packaged release passes; a tampered, incomplete, padded or hostile one is
refused with one clear line and exit 2, and nothing is written outside verify's temporary folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from export.base.errors import CompressError
from tests.cli_helpers import run_cli
from tests.test_package import base_run, copy_run, regate

REPO = Path(__file__).resolve().parents[1]
TOP = "enc-1.0-host"


@pytest.fixture(scope="session")
def release_archive(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    from export.package import package_run

    run = base_run(tmp_path_factory, tiny_encoder)
    return package_run(run, tmp_path_factory.mktemp("release"), name="enc", version="1.0").path


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """verify's temporary folders go here (checked empty afterwards)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def members_of(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


def rewrite(archive: Path, target: Path,
            change: Callable[[list[tuple[tarfile.TarInfo, bytes | None]]], list[tuple[tarfile.TarInfo, bytes | None]]]) -> Path:
    """A copy of ``archive`` with its entry list passed through ``change``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in change(members_of(archive)):
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    target.write_bytes(gzip.compress(buffer.getvalue()))
    return target


def entry(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info, data


def assert_refused(archive: Path, scratch: Path, *fragments: str) -> str:
    result = run_cli(["verify", str(archive)])
    assert result.exit_code == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert list(scratch.iterdir()) == []  # the temporary folder is gone
    return line


# ---------------------------------------------------------------------------------------------
# A good archive
# ---------------------------------------------------------------------------------------------

def test_verify_passes_a_packaged_release(release_archive: Path, scratch: Path) -> None:
    result = run_cli(["verify", str(release_archive)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "enc 1.0 (feature-extraction, int8-dynamic, profile host)"
    assert lines[1] == f"archive sha256 {hashlib.sha256(release_archive.read_bytes()).hexdigest()}"
    assert lines[2] == "manifest: unsigned"
    assert lines[3].startswith("files: 15 match manifest.json")
    assert "inputs and outputs match the manifest" in lines[4]
    assert "to the build host's (>= 0.99 required)" in lines[5]
    assert list(scratch.iterdir()) == []


def test_verify_json_report(release_archive: Path, scratch: Path) -> None:
    result = run_cli(["verify", str(release_archive), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1 and report["kind"] == "verify"
    assert report["files_checked"] == 15 and report["verdict"] is None
    example = report["example"]
    assert example["output"] == "sentence_embedding" and example["shape"] == [32]
    assert example["cosine_to_reference"] >= 0.99
    assert -1.0 <= example["pair_cosine"] <= 1.0


def test_verify_json_stays_clean_where_the_profile_wants_a_missing_gpu(tmp_path_factory: pytest.TempPathFactory,
                                                                       tiny_encoder: Path, scratch: Path) -> None:
    # onnxruntime-gpu prints "EP Error ... Falling back" to stdout when TensorRT/CUDA cannot start;
    # --json must still be one JSON document, and the report names the provider that really ran.
    from export.package import package_run

    run = copy_run(base_run(tmp_path_factory, tiny_encoder), tmp_path_factory.mktemp("gpu-run"))
    assert regate(run, "jetson") == "unverified"
    archive = package_run(run, tmp_path_factory.mktemp("gpu-release"), name="enc", version="1.0").path
    result = run_cli(["verify", str(archive), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CPUExecutionProvider" in report["example"]["providers_used"]


def test_verify_gate_passes_on_a_matching_host(release_archive: Path, scratch: Path) -> None:
    result = run_cli(["verify", str(release_archive), "--gate", "--runs", "10", "--warmup", "1"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "gate host: PASS" in result.stdout
    assert list(scratch.iterdir()) == []


def test_verify_gate_is_unverified_off_target(release_archive: Path, scratch: Path) -> None:
    # A Raspberry Pi 5 profile measured on this x86 machine: exit 3, and the report says where to go.
    result = run_cli(["verify", str(release_archive), "--gate", "--profile", "rpi5", "--runs", "10", "--warmup", "1",
                      "--json"])
    assert result.exit_code == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "unverified" and report["gate"]["profile"] == "raspberry-pi-5"
    assert report["bench"]["model"]["path"] == f"{release_archive.name}:model/model.onnx"
    assert any("gated against raspberry-pi-5" in note for note in report["notes"])


def test_verify_gate_says_when_the_carried_shipped_profile_differs(release_archive: Path, tmp_path: Path,
                                                                    scratch: Path) -> None:
    # The archive carries the host profile as it was at build time; this tool's copy now has a stricter
    # p50. The gate reads this tool's copy (an edited copy must not pass for a shipped profile) and says so.
    def loosen_p50(items):
        carried = next(data for info, data in items if info.name == f"{TOP}/profile.yaml").decode()
        assert "p50: 500" in carried
        changed = carried.replace("p50: 500", "p50: 100000").encode()
        manifest = json.loads(next(data for info, data in items if info.name == f"{TOP}/manifest.json"))
        for record in manifest["files"]:
            if record["path"] == "profile.yaml":
                record.update(size=len(changed), sha256=hashlib.sha256(changed).hexdigest())
        replaced = {"profile.yaml": changed, "manifest.json": json.dumps(manifest, indent=2).encode()}
        return [(info, replaced.get(info.name.removeprefix(f"{TOP}/"), data)) for info, data in items]

    archive = rewrite(release_archive, tmp_path / "older-profile.tar.gz", loosen_p50)
    result = run_cli(["verify", str(archive), "--gate", "--runs", "5", "--warmup", "1", "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["gate"]["profile"] == "host"
    p50 = next(check for check in report["gate"]["checks"] if check["name"] == "latency_ms.p50")
    assert p50["budget"] == 500  # this tool's copy, not the archive's
    assert ("the archive's profile.yaml differs from this tool's host profile (budgets.latency_ms.p50); "
            "gated against this tool's copy") in report["notes"]
    # The archive as packaged carries the same settings as this tool's copy: no such note.
    plain = run_cli(["verify", str(release_archive), "--gate", "--runs", "5", "--warmup", "1", "--json"])
    assert not any("differs from this tool's" in note for note in json.loads(plain.stdout)["notes"])
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Refusals: each one line, exit 2, nothing left behind
# ---------------------------------------------------------------------------------------------

def test_tampered_file_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    def flip_one_byte(items):
        out = []
        for info, data in items:
            if info.name == f"{TOP}/model/model.onnx":
                data = data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:]
            out.append((info, data))
        return out

    archive = rewrite(release_archive, tmp_path / "tampered.tar.gz", flip_one_byte)
    assert_refused(archive, scratch, "model/model.onnx", "sha256", "changed after packaging")


def test_missing_file_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    archive = rewrite(release_archive, tmp_path / "missing.tar.gz",
                      lambda items: [(i, d) for i, d in items if i.name != f"{TOP}/model/vocab.txt"])
    assert_refused(archive, scratch, "model/vocab.txt", "missing from the archive")
    archive = rewrite(release_archive, tmp_path / "no-manifest.tar.gz",
                      lambda items: [(i, d) for i, d in items if i.name != f"{TOP}/manifest.json"])
    assert_refused(archive, scratch, "the first file must be manifest.json")


def test_extra_file_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    archive = rewrite(release_archive, tmp_path / "extra.tar.gz",
                      lambda items: items + [entry(f"{TOP}/model/backdoor.py", b"print('hi')\n")])
    assert_refused(archive, scratch, "model/backdoor.py", "not listed in manifest.json")


def test_parent_directory_entry_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    archive = rewrite(release_archive, tmp_path / "dotdot.tar.gz",
                      lambda items: [entry(f"{TOP}/../../escaped.txt", b"x")] + items)
    assert_refused(archive, scratch, "escaped.txt", "'..'")
    assert not (tmp_path / "escaped.txt").exists() and not (scratch.parent / "escaped.txt").exists()


def test_absolute_path_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    target = tmp_path / "absolute.txt"
    archive = rewrite(release_archive, tmp_path / "absolute.tar.gz", lambda items: items + [entry(str(target), b"x")])
    assert_refused(archive, scratch, str(target), "absolute path")
    assert not target.exists()


def test_symlink_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = rewrite(release_archive, tmp_path / "symlink.tar.gz", lambda items: items[:1] + [
        entry(f"{TOP}/link", kind=tarfile.SYMTYPE, link=str(outside)),
        entry(f"{TOP}/link/planted.txt", b"x"),
    ] + items[1:])
    assert_refused(archive, scratch, f"{TOP}/link", "symbolic link")
    assert list(outside.iterdir()) == []


def test_hardlink_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    archive = rewrite(release_archive, tmp_path / "hardlink.tar.gz", lambda items: items + [
        entry(f"{TOP}/model/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")])
    assert_refused(archive, scratch, "model/passwd", "hard link")


def test_fifo_and_device_are_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    fifo = rewrite(release_archive, tmp_path / "fifo.tar.gz", lambda items: items + [
        entry(f"{TOP}/model/pipe", kind=tarfile.FIFOTYPE)])
    assert_refused(fifo, scratch, "model/pipe", "FIFO")
    device = rewrite(release_archive, tmp_path / "device.tar.gz", lambda items: items + [
        entry(f"{TOP}/model/disk", kind=tarfile.BLKTYPE)])
    assert_refused(device, scratch, "model/disk", "device file")


def test_entries_outside_the_top_folder_are_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    archive = rewrite(release_archive, tmp_path / "second-root.tar.gz", lambda items: items + [entry("other/x.txt", b"x")])
    assert_refused(archive, scratch, "other/x.txt", "top-level folder")


def test_oversized_archives_are_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    from export.runtime.archive import ExtractLimits, UnsafeArchiveError
    from export.runtime.verify import verify_archive

    total = sum(len(d) for _, d in members_of(release_archive) if d is not None)
    with pytest.raises(UnsafeArchiveError, match="more than the cap"):
        verify_archive(release_archive, limits=ExtractLimits(max_total_bytes=total // 2))
    with pytest.raises(UnsafeArchiveError, match="over the per-file cap"):
        verify_archive(release_archive, limits=ExtractLimits(max_file_bytes=100_000))
    with pytest.raises(UnsafeArchiveError, match="more than 5 entries"):
        verify_archive(release_archive, limits=ExtractLimits(max_entries=5))
    # A compression bomb: one small archive that inflates to 64 MiB of zeros.
    bomb = rewrite(release_archive, tmp_path / "bomb.tar.gz", lambda items: items + [
        entry(f"{TOP}/zeros.bin", bytes(64 << 20))])
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UnsafeArchiveError, match="cap"):
        verify_archive(bomb, limits=ExtractLimits(max_total_bytes=8 << 20, max_file_bytes=128 << 20))
    assert list(scratch.iterdir()) == []


def test_decompression_is_capped_even_where_headers_say_little(tmp_path: Path, scratch: Path) -> None:
    from export.runtime.archive import ExtractLimits, UnsafeArchiveError, safe_extract

    # A PAX header is read whole by tarfile; 16 MiB of it inflates from a few KiB. The cap on
    # decompressed bytes stops it before it is held in memory.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = entry("pkg/a.txt", b"hello")
        info.size = len(data)
        info.pax_headers = {"comment": "x" * (16 << 20)}
        tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "pax-bomb.tar.gz"
    archive.write_bytes(gzip.compress(buffer.getvalue()))
    assert archive.stat().st_size < 200_000
    with pytest.raises(UnsafeArchiveError, match="beyond the size cap while decompressing"):
        safe_extract(archive, scratch, ExtractLimits(max_entries=10, max_total_bytes=1 << 20))


def test_manifest_that_lies_about_the_model_is_refused(release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    def edit_manifest(change):
        def apply(items):
            out = []
            for info, data in items:
                if info.name == f"{TOP}/manifest.json":
                    manifest = json.loads(data)
                    change(manifest)
                    data = json.dumps(manifest).encode()
                out.append((info, data))
            return out
        return apply

    def wrong_dtype(manifest):
        manifest["model"]["signature"]["outputs"][-1]["dtype"] = "float16"

    def wrong_reference(manifest):
        manifest["reference"]["values"] = [-v for v in manifest["reference"]["values"]]

    archive = rewrite(release_archive, tmp_path / "dtype.tar.gz", edit_manifest(wrong_dtype))
    assert_refused(archive, scratch, "signature differs", "dtype float32 != manifest float16")
    archive = rewrite(release_archive, tmp_path / "reference.tar.gz", edit_manifest(wrong_reference))
    assert_refused(archive, scratch, "differs from the build host's")


def test_not_an_archive(tmp_path: Path, scratch: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    assert_refused(junk, scratch, "not a readable .tar.gz archive")
    result = run_cli(["verify", str(tmp_path / "absent.tar.gz")])
    assert result.exit_code == 2 and "archive not found" in result.stderr


def test_member_names_are_checked() -> None:
    from export.runtime.archive import UnsafeArchiveError, check_member_name

    assert check_member_name("pkg/./model/model.onnx").as_posix() == "pkg/model/model.onnx"
    for bad in ("/etc/passwd", "pkg/../../x", "..", "C:/x", "pkg\\..\\x", "", "a\x00b"):
        with pytest.raises(UnsafeArchiveError):
            check_member_name(bad)


# ---------------------------------------------------------------------------------------------
# On a device: no torch, no transformers, no onnx
# ---------------------------------------------------------------------------------------------

BLOCKED = ("torch", "transformers", "onnx", "optimum", "matplotlib", "sentence_transformers", "accelerate")

DEVICE_SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
from compress.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    loaded = sorted({{m.split('.')[0] for m, v in sys.modules.items() if v is not None}})
    print(json.dumps({{"exit": exc.code, "loaded": loaded}}), file=sys.stderr)
"""


def run_on_device(argv: list[str], tmp_path: Path) -> tuple[int, list[str], str]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    script = DEVICE_SCRIPT.format(blocked=BLOCKED, argv=argv)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    status = json.loads(done.stderr.strip().splitlines()[-1])
    return status["exit"], status["loaded"], done.stdout


def test_verify_runs_without_torch_transformers_or_onnx(release_archive: Path, tmp_path: Path) -> None:
    code, loaded, stdout = run_on_device(["verify", str(release_archive)], tmp_path)
    assert code == 0, stdout
    assert "inputs and outputs match the manifest" in stdout
    assert not set(loaded) & {*BLOCKED, "pydantic", "rich"}, loaded
    assert {"onnxruntime", "numpy", "tokenizers", "click"} <= set(loaded)
    # Its temporary folder is gone too. (onnxruntime 1.31 itself drops a 51-byte `.ses` session-id
    # file into $TMPDIR when it is imported; that is the library's, not verify's.)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []


def test_verify_gate_runs_without_torch_transformers_or_onnx(release_archive: Path, tmp_path: Path) -> None:
    code, loaded, stdout = run_on_device(["verify", str(release_archive), "--gate", "--runs", "5", "--warmup", "1"],
                                         tmp_path)
    assert code == 0, stdout
    assert "gate host: PASS" in stdout
    assert not set(loaded) & set(BLOCKED), loaded


def test_safe_extract_writes_only_into_a_fresh_folder(tmp_path: Path) -> None:
    from export.runtime.archive import safe_extract

    # Files are created with O_EXCL | O_NOFOLLOW, so extraction refuses a folder that already has content.
    archive = tmp_path / "plain.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info, data = entry("pkg/a.txt", b"hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(gzip.compress(buffer.getvalue()))
    destination = tmp_path / "dest"
    destination.mkdir()
    extracted = safe_extract(archive, destination)
    assert extracted.files["a.txt"].path.read_bytes() == b"hello"
    with pytest.raises(ValueError):
        safe_extract(archive, destination)  # never into a folder that already holds something
    with pytest.raises(CompressError):
        safe_extract(tmp_path / "absent.tar.gz", tmp_path / "dest")


def test_a_member_larger_than_the_manifest_declares_is_refused_before_it_is_written(
        release_archive: Path, tmp_path: Path, scratch: Path) -> None:
    # A small archive whose vocab.txt would expand to far more than the manifest says: refused
    # before a byte of it is written (a zip bomb gets no further than its first header).
    big = b"\0" * (8 << 20)
    archive = rewrite(release_archive, tmp_path / "bomb.tar.gz",
                      lambda items: [(i, d) for i, d in items if i.name != f"{TOP}/model/vocab.txt"]
                      + [entry(f"{TOP}/model/vocab.txt", big)])
    assert archive.stat().st_size < (1 << 20)
    assert_refused(archive, scratch, "model/vocab.txt", "manifest.json declares")
