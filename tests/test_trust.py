"""A verdict nobody can forge: signed manifests, published digests, and what an edited archive gets."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.test_package import base_run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("release", "stranger"):
        assert run_cli(["keys", "new", str(folder / name)]).exit_code == 0
    return {"key": folder / "release.key", "pub": folder / "release.pub", "stranger": folder / "stranger.pub",
            "stranger_key": folder / "stranger.key"}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, keys: dict[str, Path]) -> Path:
    run = base_run(tmp_path_factory, tiny_encoder)
    out = tmp_path_factory.mktemp("signed")
    result = run_cli(["package", str(run), "--out", str(out), "--sign", str(keys["key"]), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["signed_by"]
    return Path(json.loads(result.stdout)["path"])


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    run = base_run(tmp_path_factory, tiny_encoder)
    result = run_cli(["package", str(run), "--out", str(tmp_path_factory.mktemp("unsigned")), "--json"])
    assert result.exit_code == 0, result.stderr
    return Path(json.loads(result.stdout)["path"])


def forge(archive: Path, out: Path, edit) -> Path:
    """The archive with its manifest.json edited by ``edit`` (every other member as it was)."""
    with tarfile.open(archive, "r:gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("/manifest.json"):
                manifest = json.loads(data)
                edit(manifest)
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def raise_quality(manifest: dict) -> None:
    manifest["quality"]["teacher_agreement"] = 0.9999
    manifest["released_despite_failed_gate"] = False


def test_a_signed_release_verifies_against_its_trusted_key(signed: Path, keys: dict[str, Path]) -> None:
    result = run_cli(["verify", str(signed), "--trust", str(keys["pub"]), "--require-signature"])
    assert result.exit_code == 0, result.stderr
    assert "a trusted key" in result.stdout


def test_a_forged_manifest_in_a_signed_release_is_refused(signed: Path, keys: dict[str, Path],
                                                          tmp_path: Path) -> None:
    forged = forge(signed, tmp_path / "forged.tar.gz", raise_quality)
    for extra in ([], ["--gate"]):
        result = run_cli(["verify", str(forged), "--trust", str(keys["pub"]), *extra])
        assert result.exit_code == 2, result.stdout
        assert "signature does not match manifest.json" in result.stderr


def test_a_forged_unsigned_release_is_refused_when_a_signature_is_required(unsigned: Path, keys: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    forged = forge(unsigned, tmp_path / "forged.tar.gz", raise_quality)
    plain = run_cli(["verify", str(forged)])
    assert plain.exit_code == 0 and "manifest: unsigned" in plain.stdout  # said, so nobody relies on it
    required = run_cli(["verify", str(forged), "--trust", str(keys["pub"]), "--require-signature"])
    assert required.exit_code == 2 and "unsigned" in required.stderr


def test_a_signature_by_another_key_is_not_trusted(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path,
                                                   keys: dict[str, Path]) -> None:
    run = base_run(tmp_path_factory, tiny_encoder)
    out = tmp_path_factory.mktemp("stranger")
    packed = run_cli(["package", str(run), "--out", str(out), "--sign", str(keys["stranger_key"]), "--json"])
    archive = json.loads(packed.stdout)["path"]
    result = run_cli(["verify", archive, "--trust", str(keys["pub"])])
    assert result.exit_code == 2 and "not among the trusted keys" in result.stderr
    unchecked = run_cli(["verify", archive])
    assert unchecked.exit_code == 0 and "not checked against a trusted key" in unchecked.stdout


def test_the_published_digest_must_match(signed: Path) -> None:
    import hashlib

    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    assert run_cli(["verify", str(signed), "--sha256", digest]).exit_code == 0
    wrong = run_cli(["verify", str(signed), "--sha256", "0" * 64])
    assert wrong.exit_code == 2 and "is not the published" in wrong.stderr


def test_require_signature_without_a_trusted_key_is_a_usage_error(signed: Path) -> None:
    result = run_cli(["verify", str(signed), "--require-signature"])
    assert result.exit_code == 2 and "--trust" in result.stderr


def test_keys_are_never_overwritten(keys: dict[str, Path]) -> None:
    result = run_cli(["keys", "new", str(keys["key"].with_suffix(""))])
    assert result.exit_code == 2 and "never overwritten" in result.stderr


def test_a_signed_bench_report_with_an_edited_host_is_refused(keys: dict[str, Path], tiny_onnx: Path,
                                                              tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    signed = run_cli(["bench", str(tiny_onnx), "--runs", "3", "--warmup", "0", "--sign", str(keys["key"]),
                      "--output", str(report)])
    assert signed.exit_code == 0, signed.stderr
    evidence = tmp_path / "quality.json"
    evidence.write_text(json.dumps({"teacher_agreement": 0.99, "metric": "mean_cosine", "quantization_drop": 0.0}))
    honest = run_cli(["gate", str(report), "--profile", "host", "--quality", str(evidence), "--trust", str(keys["pub"])])
    assert honest.exit_code == 0, honest.stdout + honest.stderr
    assert "a trusted key" in honest.stderr
    data = json.loads(report.read_text())
    data["host"].update(cpu_model="Cortex-A78AE", arch="aarch64", board_model="NVIDIA Jetson Orin Nano")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    refused = run_cli(["gate", str(forged), "--profile", "host", "--quality", str(evidence),
                       "--trust", str(keys["pub"])])
    assert refused.exit_code == 2 and "signature does not match the bench report" in refused.stderr
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps({k: v for k, v in data.items() if k != "signature"}))
    assert "unsigned" in run_cli(["gate", str(unsigned), "--profile", "host", "--trust", str(keys["pub"])]).stderr


def test_a_required_signature_is_checked_before_a_byte_of_the_model_is_written(
        unsigned: Path, signed: Path, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.runtime.archive as archive_module
    from export.base.errors import CompressError
    from export.runtime.verify import verify_archive

    written: list[str] = []
    write_member = archive_module._write_member

    def spy(tar, member, destination, relative, inner, limits):  # noqa: ANN001 - the private function's arguments
        written.append(inner)
        return write_member(tar, member, destination, relative, inner, limits)

    monkeypatch.setattr(archive_module, "_write_member", spy)

    def declare_gigabytes(manifest: dict) -> None:
        for record in manifest["files"]:
            record["size"] = 2_500_000_000

    for archive, refusal in ((forge(unsigned, tmp_path / "unsigned.tar.gz", declare_gigabytes), "unsigned"),
                             (forge(signed, tmp_path / "signed.tar.gz", declare_gigabytes), "does not match")):
        written.clear()
        with pytest.raises(CompressError, match=refusal):
            verify_archive(archive, trust=[keys["pub"]], require_signature=True)
        assert written in (["manifest.json"], ["manifest.json", "manifest.sig"])


def test_a_private_key_is_never_readable_by_others_even_for_an_instant(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    import export.base.files as files_module

    modes: dict[str, int] = {}
    replace = os.replace

    def spy(source, target):  # noqa: ANN001 - os.replace's arguments
        modes[Path(target).name] = stat.S_IMODE(os.stat(source).st_mode)
        return replace(source, target)

    monkeypatch.setattr(files_module.os, "replace", spy)
    old = os.umask(0)
    try:
        result = run_cli(["keys", "new", str(tmp_path / "release")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert modes["release.key"] == 0o600 and stat.S_IMODE((tmp_path / "release.key").stat().st_mode) == 0o600
    assert modes["release.pub"] == 0o666  # the public key follows the umask, as any file would
