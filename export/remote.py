"""Measure on the real device from the host: ``--on ssh://user@board`` (or a name in devices.yaml).

The board needs python3 with numpy, onnxruntime, pyyaml and pydantic (tokenizers for text
models), not this project: the host sends the torch-free runtime (``export.base`` and
``export.runtime``) as one zipapp whose sha256 is recorded, with the files to measure, into a
fresh folder on the board; checks every file's sha256 there; runs one command; reads its JSON
report back; and removes the folder whatever happened.

Transport is the system OpenSSH client (``ssh`` and ``scp``), so ``~/.ssh/config``, keys, the
agent, jump hosts and ``known_hosts`` work as everywhere else: batch mode (never a prompt), a
connect timeout, host-key checking left on. ``COMPRESS_SSH_CONFIG`` names another ssh config
file (``ssh -F``). Every failure is one line: unreachable, authentication refused, unknown host
key, no python3 or a missing package (with the install line), a full disk, a dropped connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from export.base.errors import CompressError
from export.base.files import process_alive
from export.base.yaml_file import read_yaml_mapping
from export.runtime.bench import RemoteRun

CONNECT_TIMEOUT_S = 10
COMMAND_TIMEOUT_S = 3600
DEVICES_FILES = (Path("devices.yaml"), Path.home() / ".config" / "compress" / "devices.yaml")
# A strict grammar for what reaches ssh's command line: nothing may begin with "-" (ssh would read
# "-oProxyCommand=..." as an option and run it), and a name holds only what hosts and users hold.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}"
_HOST_NAME = rf"{_NAME}(?:\.{_NAME})*|\[[0-9A-Fa-f:.]{{2,45}}\]"
_SSH_URL = re.compile(rf"^ssh://(?:(?P<user>{_NAME})@)?(?P<host>{_HOST_NAME})(?::(?P<port>\d{{1,5}}))?/?$")
MAX_DEVICES_BYTES = 64 * 1024
# Beside a model, what a measurement on the board may read (tokenizer and configs of text models).
SIDECARS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
            "generation_config.json")


@dataclass(frozen=True)
class Target:
    """A board reachable over SSH."""

    destination: str  # what ssh is given: user@host, or a Host alias of the ssh config
    port: int | None = None
    label: str = ""  # as the user named it
    profile: str | None = None  # devices.yaml: the board's profile
    workdir: str = "/tmp"  # where the per-run folder is made on the board
    python: str = "python3"
    key: str | None = None  # devices.yaml: a signing key on the board; its reports come back signed there


def parse_target(text: str, devices_file: Path | None = None) -> Target:
    """``ssh://[user@]host[:port]``, or a board's name in devices.yaml (name -> address, profile, ...).

    Checked before anything runs: a user, host or port outside the grammar is a CompressError, so a
    chain with ``--on`` fails at its first line, not after minutes of training.
    """
    text = text.strip()
    if text.startswith("ssh:"):
        return _parse_url(text, label=text)
    for path in ([devices_file] if devices_file else DEVICES_FILES):
        if path is not None and path.is_file():
            devices = read_yaml_mapping(path, "devices file", max_bytes=MAX_DEVICES_BYTES)
            entry = devices.get(text)
            if entry is None:
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
                raise CompressError(f"{path}: board {text!r} needs an address: ssh://[user@]host[:port]")
            inner = _parse_url(entry["address"].strip(), label=f"{path}: {text}.address")
            fields = {name: entry.get(name) for name in ("profile", "workdir", "python", "key")}
            wrong = [name for name, value in fields.items() if value is not None and not isinstance(value, str)]
            if wrong:
                raise CompressError(f"{path}: {text}.{wrong[0]} must be a string")
            return Target(inner.destination, inner.port, label=text, profile=fields["profile"],
                          workdir=fields["workdir"] or "/tmp", python=fields["python"] or "python3",
                          key=fields["key"] or None)
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise CompressError(f"--on {shown!r}: expected ssh://[user@]host[:port] or a board named in devices.yaml")


def _parse_url(text: str, *, label: str) -> Target:
    match = _SSH_URL.match(text)
    port = int(match["port"]) if match and match["port"] else None
    if not match or (port is not None and not 0 < port < 65536):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise CompressError(f"{label if label != text else '--on'} {shown!r}: not an ssh://[user@]host[:port] "
                            "address (user and host: letters, digits, '.', '_', '-', not first)")
    host = match["host"].strip("[]")
    destination = f"{match['user']}@{host}" if match["user"] else host
    return Target(destination, port, label=text)


class Board:
    """One board, reached through the system ssh and scp."""

    def __init__(self, target: Target) -> None:
        self.target = target
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if os.environ.get("COMPRESS_SSH_CONFIG"):
            options = ["-F", os.environ["COMPRESS_SSH_CONFIG"], *options]
        self._options = options

    def run(self, command: str, *, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """``command`` on the board; its stdout. CompressError (one line) for every way it can fail."""
        port = ["-p", str(self.target.port)] if self.target.port else []
        argv = ["ssh", *self._options, *port, "--", self.target.destination, command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise CompressError("no ssh client on this machine (install OpenSSH: apt-get install openssh-client)") \
                from None
        except subprocess.TimeoutExpired:
            raise CompressError(f"{self.target.label}: no answer within {timeout:.0f} s") from None
        if done.returncode != 0:
            raise CompressError(self._explain(done.returncode, done.stderr, done.stdout))
        return done.stdout

    def upload(self, files: dict[str, Path], folder: str) -> None:
        """Copy ``files`` (name on the board -> local path) into ``folder``, each streamed through ssh into ``cat``.

        A POSIX shell is all the board needs (no scp or sftp server); what arrives is checked by
        sha256 afterwards anyway.
        """
        port = ["-p", str(self.target.port)] if self.target.port else []
        subfolders = sorted({str(Path(name).parent) for name in files} - {"."})
        if subfolders:
            self.run("mkdir -p " + " ".join(shlex.quote(f"{folder}/{sub}") for sub in subfolders))
        for name, path in files.items():
            destination = shlex.quote(f"{folder}/{name}")
            argv = ["ssh", *self._options, *port, "--", self.target.destination, f"cat > {destination}"]
            with open(path, "rb") as source:
                done = subprocess.run(argv, stdin=source, capture_output=True, timeout=COMMAND_TIMEOUT_S)
            if done.returncode != 0:
                raise CompressError(self._explain(done.returncode, done.stderr.decode(errors="replace"), ""))

    @contextlib.contextmanager
    def workspace(self) -> Iterator[str]:
        """A fresh folder on the board, removed afterwards whatever happens.

        When the connection drops the folder cannot be removed then; its name carries this host's
        name and process id, so the next run from this host removes it once that process is gone.
        """
        workdir = shlex.quote(self.target.workdir)
        mine = f"compress-{_THIS_HOST}-"
        stale = [name for name in self.run(f"ls -1 {workdir} 2>/dev/null || true").split()
                 if name.startswith(mine) and _dead(name[len(mine):].split("-", 1)[0])]
        if stale:
            self.run("rm -rf " + " ".join(shlex.quote(f"{self.target.workdir}/{name}") for name in stale), timeout=60)
        folder = self.run(f"mktemp -d {workdir}/{mine}{os.getpid()}-XXXXXXXX").strip()
        if not folder.startswith("/"):
            raise CompressError(f"{self.target.label}: could not make a work folder (mktemp said {folder!r})")
        try:
            yield folder
        finally:
            with contextlib.suppress(CompressError, subprocess.SubprocessError, OSError):
                self.run(f"rm -rf {shlex.quote(folder)}", timeout=60)

    def _explain(self, code: int, stderr: str, stdout: str) -> str:
        where, text = self.target.label or self.target.destination, stderr.strip()
        lowered = text.lower()
        if "host key verification failed" in lowered or "host key for" in lowered:
            return (f"{where}: its host key is unknown or has changed; check it and add it to known_hosts "
                    f"(ssh {self.target.destination} once, by hand)")
        if "permission denied" in lowered and "publickey" in lowered or "too many authentication" in lowered:
            return f"{where}: authentication refused (batch mode: a key in your agent or ssh config must log in)"
        if "no space left" in lowered:
            return f"{where}: the board's disk is full ({self.target.workdir})"
        if any(s in lowered for s in ("could not resolve", "connection refused", "timed out", "no route to host",
                                      "network is unreachable")):
            return f"{where}: unreachable ({_last_line(text)})"
        if code == 255 or "connection closed" in lowered or "broken pipe" in lowered:
            return f"{where}: the connection dropped ({_last_line(text) or 'ssh exit 255'})"
        if code == 127 or "not found" in lowered and self.target.python in lowered:
            return (f"{where}: no {self.target.python} on the board (install Python 3.10+, or set python: in "
                    "devices.yaml)")
        with contextlib.suppress(ValueError, IndexError, AttributeError):
            error = json.loads(stdout.strip().splitlines()[-1]).get("error")
            if error:
                return f"{where}: {error}"
        return f"{where}: remote command failed (exit {code}): {_last_line(text) or _last_line(stdout)}"


_THIS_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _dead(pid: str) -> bool:
    return pid.isdigit() and not process_alive(int(pid))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# ---------------------------------------------------------------------------------------------
# The runtime zipapp


# The runtime's entry: an old Python gets one JSON line before the first import it cannot parse.
_RUNTIME_MAIN = """import sys
if sys.version_info < (3, 10):
    import json
    print(json.dumps({"error": "this board runs Python %d.%d; the runtime needs Python 3.10 or newer: install "
                               "python3.10+ (or set python: in devices.yaml to one)" % sys.version_info[:2]}))
    sys.exit(2)
from export.runtime.device_main import main
sys.exit(main())
"""


def build_runtime(folder: Path) -> tuple[Path, str]:
    """``folder/compress-runtime.pyz``: export.base and export.runtime, runnable with ``python3 FILE``.

    Built byte-for-byte the same from the same source (sorted entries, a fixed date), so its sha256
    names the runtime a report was measured with.
    """
    root = Path(__file__).resolve().parent
    sources = [root / "__init__.py", *sorted((root / "base").rglob("*.py")), *sorted((root / "runtime").rglob("*.py"))]
    target = folder / "compress-runtime.pyz"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source in sources:
            info = zipfile.ZipInfo(f"export/{source.relative_to(root).as_posix()}", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
        main = zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0))
        archive.writestr(main, _RUNTIME_MAIN)
    return target, hashlib.sha256(target.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# What the commands do there


def run_remote(target: Target, files: dict[str, Path],
               command: list[str] | Callable[[RemoteRun], list[str]]) -> tuple[dict[str, Any], RemoteRun]:
    """Send the runtime and ``files`` (name on the board -> local path) to a fresh folder there, check
    them, and run ``command`` in that folder (a function of how it is run, when the board must
    write that into its report).

    Returns the command's JSON report and how it was measured; nothing is written locally.
    """
    board = Board(target)
    with tempfile.TemporaryDirectory(prefix="compress-runtime-") as scratch:
        runtime, runtime_sha = build_runtime(Path(scratch))
        sent = {runtime.name: runtime, **files}
        names = list(sent)
        expected = {name: _sha256(path) for name, path in sent.items()}
        run = RemoteRun(target=target.label or target.destination, runtime_sha256=runtime_sha,
                        files_checked=len(sent))
        if callable(command):
            command = command(run)
        with board.workspace() as folder:
            board.upload(sent, folder)
            python = shlex.quote(target.python)
            pyz = shlex.quote(f"{folder}/{runtime.name}")
            arrived = _json(board.run(f"cd {shlex.quote(folder)} && {python} {pyz} sha256 "
                                      + " ".join(shlex.quote(n) for n in names)), target)
            wrong = sorted(name for name in names if arrived.get(name) != expected[name])
            if wrong:
                raise CompressError(f"{target.label}: {', '.join(wrong)} arrived damaged (sha256 differs)")
            report = _json(board.run(f"cd {shlex.quote(folder)} && {python} {pyz} "
                                     + " ".join(shlex.quote(part) for part in command)), target)
    return report, run


def model_files(model: Path, under: str) -> dict[str, Path]:
    """An ONNX file with its external data and the tokenizer and config files beside it, placed in
    the board's folder ``under`` (so two models with the same file names do not meet)."""
    if not model.is_file():
        raise CompressError(f"model not found: {model}")
    files = [model, *sorted(p for p in model.parent.glob(f"{model.name}*") if p != model and p.is_file())]
    files += [model.parent / name for name in SIDECARS if (model.parent / name).is_file()]
    return {f"{under}/{path.name}": path for path in files}


def check_device(target: Target) -> dict[str, Any]:
    """What the board has and lacks (``compress devices check``)."""
    facts, run = run_remote(target, {}, ["check"])
    return {**facts, "target": run.target, "runtime_sha256": run.runtime_sha256}


def _json(text: str, target: Target) -> dict[str, Any]:
    try:
        data = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CompressError(f"{target.label}: the board answered something that is not a report") from None
    if not isinstance(data, dict):
        raise CompressError(f"{target.label}: the board answered something that is not a report")
    return data


def _sha256(path: Path) -> str:
    from export.base.files import sha256_file

    return sha256_file(path)


def remote_bench(target: Target, model: Path, profile_file: Path, *, other: Path | None = None, runs: int,
                 warmup: int, threads: int | None = None, **workload: int | None) -> dict[str, Any]:
    """``compress bench`` on the board: the report as JSON, with ``remote`` saying where and through what.

    The board writes the model paths as they are here and the ``remote`` field itself, so that a
    board with a signing key (``key:`` in devices.yaml) signs the report exactly as the host keeps it.
    """
    files = {**model_files(model, "model"), "profile.yaml": profile_file}
    command = ["bench", f"model/{model.name}", "--profile", "profile.yaml", "--runs", str(runs), "--warmup", str(warmup),
               "--model-label", str(model)]
    if other is not None:
        files.update(model_files(other, "other"))
        command += ["--other", f"other/{other.name}", "--other-label", str(other)]
    if threads is not None:
        command += ["--threads", str(threads)]
    for name, value in workload.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if target.key:
        command += ["--sign", target.key]
    report, _ = run_remote(target, files, lambda run: [*command, "--remote", json.dumps(dataclasses.asdict(run))])
    return report


def remote_verify(target: Target, archive: Path, *, gate: bool, profile_file: Path | None, runs: int | None,
                  warmup: int | None, trust: list[Path], require_signature: bool,
                  libraries: bool = False) -> tuple[dict[str, Any], RemoteRun]:
    """``compress verify`` on the board: the archive, its keys and profile sent there; the report back.
    ``libraries``: the board also loads the release with each library the model card names, where installed there."""
    if not archive.is_file():
        raise CompressError(f"archive not found: {archive}")
    command = ["verify", archive.name, *(["--gate"] if gate else [])]
    sent = {archive.name: archive}
    if profile_file is not None:
        command += ["--profile", "profile.yaml"]
        sent["profile.yaml"] = profile_file
    for name, value in (("--runs", runs), ("--warmup", warmup)):
        if value is not None:
            command += [name, str(value)]
    for index, key in enumerate(trust):
        command += ["--trust", f"trusted-{index}.pub"]
        sent[f"trusted-{index}.pub"] = key
    if require_signature:
        command.append("--require-signature")
    if libraries:
        command.append("--libraries")
    return run_remote(target, sent, command)
