"""The device runtime on an arm64 board: Debian's arm64 userland under QEMU user mode (slow: it
builds the board once, 529 MB on disk here, then runs every command emulated).

    pytest -m slow tests/test_arm64_board.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_lm_package import lm_archive, lm_run  # noqa: F401  (fixtures: a packaged language model)
from tests.test_package import copy_run, regate, release_run  # noqa: F401  (fixtures: an encoder run)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux" or (os.geteuid() != 0 and shutil.which("qemu-aarch64-static") is None),
                       reason="needs Linux and qemu-user-static (or root to install it)"),
]


@pytest.fixture(scope="module")
def android_archive(release_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The encoder release packaged for android-arm64: the .onnx and its ORT-format twin."""
    from export.package import package_run

    run = copy_run(release_run, tmp_path_factory.mktemp("android-run"))
    regate(run, "android-arm64")
    return package_run(run, tmp_path_factory.mktemp("android-release"), name="tiny-encoder", version="1").path


def test_the_emulated_board_verifies_benches_and_gates_both_kinds_of_release(
        android_archive: Path, lm_archive: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "arm64.json"
    root = Path(os.environ.get("COMPRESS_ARM64_ROOT", Path.home() / ".cache" / "compress" / "arm64-bookworm"))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "arm64_board.py"), "--archive", str(android_archive),
                    "--archive", str(lm_archive), "--root", str(root), "--runs", "3", "--out", str(out)],
                   check=True, cwd=tmp_path)
    found = json.loads(out.read_text())
    assert found["board"]["host"]["arch"] == "aarch64" and found["board"]["host"]["emulated"]
    encoder, lm = found["results"]
    assert encoder["errors"] == {} and lm["errors"] == {}
    for side in ("native", "emulated", "over_ssh"):
        # int8 kernels differ between x86 (VNNI) and Arm (SDOT): the reference's own tolerance holds.
        assert encoder[side]["cosine_to_reference"] >= 0.999
        assert encoder[side]["ort_cosine"] >= 0.9999
    # verify passed on each side (no errors): an int8 LM holds the manifest's leading tokens; the SSH board is
    # the emulated one, so their answers are the same.
    assert lm["over_ssh"]["tokens"] == lm["emulated"]["tokens"]
    for row in (encoder, lm):
        assert row["gate_emulated"] == "unverified"
        assert any("user-mode emulation" in reason for reason in row["gate_emulated_reasons"])
        assert row["emulated_host"]["arch"] == "aarch64" and row["emulated_host"]["board_model"] is None
