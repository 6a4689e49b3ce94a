"""Measuring on a board over SSH: a real SSH server on 127.0.0.1 plays the board.

The client is this machine's OpenSSH (`ssh`, `scp`), configured as a user would (an ssh config
with the board's address, key and known_hosts); the server (tests/ssh_server.py) logs in by key
only and runs each command in a shell here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import yaml

from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests import ssh_server
from tests.conftest import build_tiny_onnx
from tests.test_lm_package import lm_archive, lm_run  # noqa: F401  (fixtures: a packaged language model)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="needs the OpenSSH client (ssh, scp, ssh-keygen)")


class Server:
    """One SSH server process, its port, and the folder its commands run in."""

    def __init__(self, keys: Path, home: Path, python: str, *extra: str) -> None:
        self.home = home
        self.process, self.port = ssh_server.start(keys, home, python, *extra)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ssh_server.make_keys(tmp_path_factory.mktemp("ssh-keys"))


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python with nothing installed: a board that lacks onnxruntime and numpy."""
    folder = tmp_path_factory.mktemp("bare-python")
    venv.create(folder, with_pip=False)
    return str(folder / "bin" / "python")


@pytest.fixture(scope="module")
def servers(keys: Path, tmp_path_factory: pytest.TempPathFactory, bare_python: str):
    base = tmp_path_factory.mktemp("boards")
    running = {"board": Server(keys, base / "board", sys.executable),
               "bare": Server(keys, base / "bare", bare_python),
               "full": Server(keys, base / "full", sys.executable, "--quota", "20000")}
    yield running
    for server in running.values():
        server.stop()


def write_config(keys: Path, folder: Path, servers: dict[str, Server]) -> Path:
    """An ssh config and known_hosts, as a user keeps them, and devices.yaml naming the boards."""
    config = ssh_server.ssh_config(keys, folder, {name: server.port for name, server in servers.items()})
    known = folder / "known_hosts"
    (folder / "empty_known_hosts").write_text("")
    closed = _closed_port()
    blocks = [config.read_text()]
    board = servers["board"]
    blocks += [
        f"Host stranger\n  HostName 127.0.0.1\n  Port {board.port}\n  IdentityFile {keys / 'user_key'}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {folder / 'empty_known_hosts'}\n  StrictHostKeyChecking yes\n",
        f"Host intruder\n  HostName 127.0.0.1\n  Port {board.port}\n  IdentityFile {keys / 'other_key'}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n",
        f"Host nowhere\n  HostName 127.0.0.1\n  Port {closed}\n  UserKnownHostsFile {known}\n",
    ]
    config.write_text("\n".join(blocks))
    devices = {name: {"address": f"ssh://{name}", "workdir": str(server.home)} for name, server in servers.items()}
    devices["nopython"] = {"address": "ssh://board", "workdir": str(servers["board"].home),
                           "python": "/nonexistent/python3"}
    devices.update({name: {"address": f"ssh://{name}"} for name in ("stranger", "intruder", "nowhere")})
    for name, python in _broken_pythons(folder).items():  # boards whose Python is too old, or whose wheel is wrong
        devices[name] = {"address": "ssh://board", "workdir": str(servers["board"].home), "python": str(python)}
    (folder / "devices.yaml").write_text(yaml.safe_dump(devices))
    return config


def _broken_pythons(folder: Path) -> dict[str, Path]:
    """A Python that says it is 3.9, and one whose onnxruntime is a wheel for another libc."""
    wrong = folder / "wrong-wheel" / "onnxruntime"
    wrong.mkdir(parents=True)
    (wrong / "__init__.py").write_text(
        "raise ImportError(\"/lib/aarch64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found\")\n")
    shims = {"oldpython": f'exec {sys.executable} -c "import runpy, sys; sys.version_info = (3, 9, 18); '
                          f'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name=\'__main__\')" "$@"',
             "wrongwheel": f'PYTHONPATH={wrong.parent} exec {sys.executable} "$@"'}
    paths = {}
    for name, line in shims.items():
        paths[name] = folder / f"{name}-python3"
        paths[name].write_text(f"#!/bin/sh\n{line}\n")
        paths[name].chmod(0o755)
    return paths


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lab(keys: Path, servers: dict[str, Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with devices.yaml, the ssh config in force, and a tiny model to measure."""
    config = write_config(keys, tmp_path, servers)
    monkeypatch.setenv("COMPRESS_SSH_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    build_tiny_onnx(tmp_path / "tiny.onnx")
    return tmp_path


def left_on(server: Server) -> list[str]:
    return sorted(p.name for p in server.home.iterdir() if p.name.startswith("compress-"))


def this_machine_profile(folder: Path) -> Path:
    """A user profile whose hardware is this machine: a verdict measured here can be pass or fail."""
    host = detect_host()
    data = yaml.safe_load(load_profile("host").source.read_text())
    data.update(name="this-machine", aliases=[], description="the machine running the tests")
    data["hardware"] = {"device": "cpu", "arch": host.arch, "cpu": {"cores": host.usable_cores}}
    data["runtime"] = {"providers": ["CPUExecutionProvider"], "intra_op_threads": host.usable_cores}
    path = folder / "this-machine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_bench_round_trip_lands_the_board_s_numbers_in_the_report(lab: Path, servers: dict[str, Server]) -> None:
    result = run_cli(["bench", "tiny.onnx", "--on", "board", "--runs", "5", "--warmup", "1", "--output", "b.json",
                      "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((lab / "b.json").read_text())
    assert report["remote"]["target"] == "board" and report["remote"]["files_checked"] == 3
    assert len(report["remote"]["runtime_sha256"]) == 64
    assert report["latency"]["runs"] == 5 and report["latency"]["p50_ms"] > 0
    assert report["host"]["cpu_model"] == detect_host().cpu_model
    assert left_on(servers["board"]) == []  # the per-run folder is gone


def test_a_matching_board_gates_to_pass_or_fail_and_a_jetson_stays_unverified(lab: Path) -> None:
    profile = this_machine_profile(lab)
    bench = run_cli(["bench", "tiny.onnx", "--profile", str(profile), "--on", "board", "--runs", "5",
                     "--output", "remote.json"])
    assert bench.exit_code == 0, bench.stderr
    (lab / "quality.json").write_text(json.dumps({"teacher_agreement": 0.99, "metric": "mean_cosine",
                                                  "quantization_drop": 0.0}))
    here = run_cli(["gate", "remote.json", "--profile", str(profile), "--quality", "quality.json", "--json"])
    assert here.exit_code in (0, 1), here.stdout + here.stderr
    assert json.loads(here.stdout)["verdict"] in ("pass", "fail")
    jetson = run_cli(["gate", "remote.json", "--profile", "jetson", "--quality", "quality.json"])
    assert jetson.exit_code == 3


def test_devices_check_reports_the_board(lab: Path) -> None:
    result = run_cli(["devices", "check", "board", "--json"])
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["missing"] == [] and "CPUExecutionProvider" in facts["providers"]
    assert facts["host"]["usable_cores"] >= 1 and facts["python"]


def test_verify_gate_runs_on_the_board(lab: Path, servers: dict[str, Server], tiny_encoder: Path,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.test_package import base_run

    run = base_run(tmp_path_factory, tiny_encoder)
    packed = run_cli(["package", str(run), "--out", str(lab / "dist"), "--json"])
    archive = json.loads(packed.stdout)["path"]
    result = run_cli(["verify", archive, "--gate", "--on", "board", "--runs", "5", "--warmup", "1", "--json"])
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["gate"]["verdict"] in ("pass", "fail")  # the host profile on this machine: a verdict
    assert any(note.startswith("verified on board over SSH") for note in report["notes"])
    assert left_on(servers["board"]) == []


@pytest.mark.parametrize("board, fragment", [
    ("nowhere", "unreachable"),
    ("intruder", "authentication refused"),
    ("stranger", "host key is unknown or has changed"),
    ("nopython", "no /nonexistent/python3 on the board"),
    ("bare", "lacks numpy, onnxruntime, pyyaml, pydantic: pip install numpy onnxruntime pyyaml pydantic"),
    ("full", "disk is full"),
    ("oldpython", "this board runs Python 3.9; the runtime needs Python 3.10 or newer: install python3.10+"),
    ("wrongwheel", "onnxruntime is installed but does not load on this board (/lib/aarch64-linux-gnu/libc.so.6: "
                   "version `GLIBC_2.38' not found): pip install --force-reinstall onnxruntime (a wheel for x86_64"),
    ("ssh://no-such-host.invalid", "unreachable"),
])
def test_each_failure_is_one_line_and_exit_2(lab: Path, servers: dict[str, Server], board: str,
                                            fragment: str) -> None:
    result = run_cli(["bench", "tiny.onnx", "--on", board, "--runs", "2", "--output", "never.json"])
    assert result.exit_code == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and fragment in error, error
    assert not (lab / "never.json").exists()
    for server in servers.values():
        assert left_on(server) == []


def test_a_dropped_connection_leaves_nothing_here_and_the_next_run_cleans_the_board(
        lab: Path, keys: Path, tmp_path: Path) -> None:
    # A board whose python dies with its SSH server in the middle of the bench.
    home = tmp_path / "fragile"
    server = Server(keys, home, sys.executable)
    try:
        shim = tmp_path / "python-that-drops"
        shim.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            case "$*" in *" bench "*) kill -9 {server.process.pid}; sleep 5 ;; esac
            exec {sys.executable} "$@"
            """))
        shim.chmod(0o755)
        devices = yaml.safe_load((lab / "devices.yaml").read_text())
        devices["fragile"] = {"address": "ssh://fragile", "workdir": str(home), "python": str(shim)}
        (lab / "devices.yaml").write_text(yaml.safe_dump(devices))
        config = Path(os.environ["COMPRESS_SSH_CONFIG"])
        known = (keys / "host_key.pub").read_text().split()
        with open(lab / "known_hosts", "a") as hosts:
            hosts.write(f"[127.0.0.1]:{server.port} {known[0]} {known[1]}\n")
        config.write_text(config.read_text() + f"\nHost fragile\n  HostName 127.0.0.1\n  Port {server.port}\n"
                          f"  IdentityFile {keys / 'user_key'}\n  IdentitiesOnly yes\n"
                          f"  UserKnownHostsFile {lab / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
        # In its own process, as a user's run: once it has exited, its PID names a run that is over.
        result = subprocess.run([sys.executable, "-c", "from compress.cli import main; main()", "bench", "tiny.onnx",
                                 "--on", "fragile", "--runs", "2", "--output", "never.json"],
                                cwd=lab, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "connection dropped" in result.stderr.strip().splitlines()[-1]
        assert not (lab / "never.json").exists()
        assert len(left_on(server)) == 1  # the board could not be told to clean up

        # The next run from this host, with the board back, removes the folder of the dead run.
        revived = Server(keys, home, sys.executable)
        try:
            config.write_text(config.read_text().replace(f"Port {server.port}", f"Port {revived.port}"))
            with open(lab / "known_hosts", "a") as hosts:
                hosts.write(f"[127.0.0.1]:{revived.port} {known[0]} {known[1]}\n")
            devices["fragile"]["python"] = sys.executable
            (lab / "devices.yaml").write_text(yaml.safe_dump(devices))
            again = run_cli(["bench", "tiny.onnx", "--on", "fragile", "--runs", "2"])
            assert again.exit_code == 0, again.stderr
            assert left_on(revived) == []
        finally:
            revived.stop()
    finally:
        server.stop()


def test_a_board_with_its_own_key_signs_what_it_measures(lab: Path, servers: dict[str, Server]) -> None:
    # The key lives on the board (here: the board's home); the host never holds it.
    board_home = servers["board"].home
    assert run_cli(["keys", "new", str(board_home / "board")]).exit_code == 0
    devices = yaml.safe_load((lab / "devices.yaml").read_text())
    devices["signer"] = {**devices["board"], "key": str(board_home / "board.key")}
    devices["keyless"] = {**devices["board"], "key": str(board_home / "missing.key")}
    (lab / "devices.yaml").write_text(yaml.safe_dump(devices))
    profile = this_machine_profile(lab)

    bench = run_cli(["bench", "tiny.onnx", "--profile", str(profile), "--on", "signer", "--runs", "5",
                     "--output", "signed.json"])
    assert bench.exit_code == 0, bench.stderr
    report = json.loads((lab / "signed.json").read_text())
    assert report["remote"]["target"] == "signer" and report["model"]["path"] == "tiny.onnx"
    (lab / "quality.json").write_text(json.dumps({"teacher_agreement": 0.99, "metric": "mean_cosine",
                                                  "quantization_drop": 0.0}))
    trusted = run_cli(["gate", "signed.json", "--profile", str(profile), "--quality", "quality.json",
                       "--trust", str(board_home / "board.pub")])
    assert trusted.exit_code in (0, 1) and "a trusted key" in trusted.stderr, trusted.stdout + trusted.stderr

    report["host"]["cpu_model"] = "NVIDIA Jetson Orin Nano"  # a claim edited after the board signed
    (lab / "forged.json").write_text(json.dumps(report))
    forged = run_cli(["gate", "forged.json", "--profile", str(profile), "--quality", "quality.json",
                      "--trust", str(board_home / "board.pub")])
    assert forged.exit_code == 2 and "changed after signing" in forged.stderr

    twice = run_cli(["bench", "tiny.onnx", "--on", "signer", "--sign", str(board_home / "board.key")])
    assert twice.exit_code == 2 and "drop --sign" in twice.stderr
    missing = run_cli(["bench", "tiny.onnx", "--on", "keyless", "--runs", "5"])
    assert missing.exit_code == 2 and "signing key not found" in missing.stderr, missing.stderr
    assert left_on(servers["board"]) == []


def test_the_chain_benches_and_gates_on_the_board(lab: Path, servers: dict[str, Server], tiny_encoder: Path) -> None:
    from tests.conftest import real_sentences

    profile = this_machine_profile(lab)
    (lab / "texts.txt").write_text("\n".join(real_sentences(80)) + "\n")
    args = ["distill", "--teacher", str(tiny_encoder), "--data", "texts.txt", "--out", "run", "--max-steps", "2",
            "--threads", "1", "--batch-size", "16", "--profile", str(profile), "--on", "board"]
    result = run_cli(args)
    assert result.exit_code in (0, 1), result.stderr  # a matching board: a verdict, never unverified
    bench = json.loads((lab / "run" / "bench" / "bench.json").read_text())
    assert bench["remote"]["target"] == "board"
    final = json.loads((lab / "run" / "run.json").read_text())["final_model"]
    assert Path(bench["model"]["path"]).resolve() == (lab / "run" / final).resolve()  # named as it is here
    assert json.loads((lab / "run" / "bench" / "stage.json").read_text())["params"]["on"] == "board"
    assert left_on(servers["board"]) == []


def test_the_runtime_zipapp_is_reproducible_and_runs_with_python_alone(tmp_path: Path) -> None:
    from export.remote import build_runtime

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, digest = build_runtime(tmp_path / "a")
    _, again = build_runtime(tmp_path / "b")
    assert digest == again  # the sha256 a report records names the same runtime every time
    build_tiny_onnx(tmp_path / "tiny.onnx")
    checked = subprocess.run([sys.executable, str(first), "check"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["missing"] == []
    profile = load_profile("host").source
    bench = subprocess.run([sys.executable, str(first), "bench", "tiny.onnx", "--profile", str(profile), "--runs", "3",
                            "--warmup", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["latency"]["runs"] == 3
    broken = subprocess.run([sys.executable, str(first), "bench", "absent.onnx", "--profile", str(profile)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert broken.returncode == 2 and json.loads(broken.stdout) == {"error": "model not found: absent.onnx"}


@pytest.mark.parametrize("target", ["ssh://-oProxyCommand=touch%20MARKER", "ssh://user@-oProxyCommand=x",
                                    "ssh://-p", "ssh://board:0", "ssh://board:99999", "dash-board"])
def test_an_ssh_target_that_could_be_an_option_is_refused_before_anything_runs(lab: Path, target: str) -> None:
    marker = lab / "MARKER"
    devices = yaml.safe_load((lab / "devices.yaml").read_text())
    devices["dash-board"] = {"address": f"ssh://-oProxyCommand=touch {marker}"}
    (lab / "devices.yaml").write_text(yaml.safe_dump(devices))
    target = target.replace("MARKER", str(marker))
    for argv in (["bench", "tiny.onnx", "--on", target, "--runs", "2"], ["devices", "check", target],
                 ["distill", "--on", target, "--stop-after", "distill", "--out", str(lab / "run")]):
        result = run_cli(argv)
        assert result.exit_code == 2, (argv, result.stdout[-300:], result.stderr[-300:])
        assert "ssh://[user@]host[:port]" in result.stderr.strip().splitlines()[-1]
        assert not marker.exists() and not (lab / "run").exists()


def test_ssh_reads_the_destination_as_a_host_even_when_it_looks_like_an_option(lab: Path) -> None:
    from export.base.errors import CompressError
    from export.remote import Board, Target

    marker = lab / "proxy-ran"
    board = Board(Target(f"-oProxyCommand=touch {marker}", label="forged"))  # past the parser, as a bug would be
    with pytest.raises(CompressError):
        board.run("true", timeout=30)
    assert not marker.exists()  # "--" before the destination: ssh never took it as an option


def test_a_board_without_psutil_reports_what_it_can(lab: Path, servers: dict[str, Server]) -> None:
    python = lab / "python-without-psutil"
    python.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import runpy, sys; sys.modules[\"psutil\"] = None; "
                      "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name=\"__main__\")' \"$@\"\n")
    python.chmod(0o755)
    devices = yaml.safe_load((lab / "devices.yaml").read_text())
    devices["nopsutil"] = {**devices["board"], "python": str(python)}
    (lab / "devices.yaml").write_text(yaml.safe_dump(devices))
    result = run_cli(["devices", "check", "nopsutil"])
    assert result.exit_code == 0, result.stderr
    assert "memory " in result.stdout and "Traceback" not in result.stderr


def test_verify_libraries_runs_the_model_card_lines_on_the_board(lab: Path, servers: dict[str, Server],
                                                                 lm_archive: Path) -> None:
    """The board's own Python loads the language-model release with ONNX Runtime GenAI (installed there)
    and reports llama.cpp as missing where llama-cpp-python is."""
    result = run_cli(["verify", str(lm_archive), "--on", "board", "--libraries", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    checks = {c["library"]: c for c in report["libraries"]}
    assert checks["onnxruntime-genai"]["status"] == "matches", checks
    assert checks["llama-cpp-python"]["status"] in ("not installed", "runs"), checks
    assert any(note.startswith("verified on board over SSH") for note in report["notes"])
    assert left_on(servers["board"]) == []
