"""A real SSH server on 127.0.0.1 for the tests: the "board" that `--on ssh://...` measures on.

asyncssh serves the SSH protocol (public-key login only, a throw-away host key); each command
runs in a shell on this machine, in ``HOME`` set to a folder of the test's. Run as a script it
prints its port on one line, then serves until killed:

    python tests/ssh_server.py HOST_KEY AUTHORIZED_KEYS HOME [--python PATH] [--quota BYTES]

``--python`` is put first on the commands' PATH as ``python3`` (the board's interpreter);
``--quota`` plays a nearly full disk: a ``cat > FILE`` upload fails as cat does on a full disk
once that many bytes have been written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncssh


async def _serve(args: argparse.Namespace) -> None:
    env = dict(os.environ, HOME=args.home)
    if args.python:
        shim = os.path.join(args.home, ".board-bin")
        os.makedirs(shim, exist_ok=True)
        target = os.path.join(shim, "python3")
        # A script, not a symlink: a venv's python finds its packages only when run by its own path.
        with open(target, "w") as handle:
            handle.write(f'#!/bin/sh\nexec "{args.python}" "$@"\n')
        os.chmod(target, 0o755)
        env["PATH"] = shim + os.pathsep + env.get("PATH", "")

    written = [0]

    async def full_disk(process: asyncssh.SSHServerProcess, path: str) -> None:
        with open(path, "wb") as target:
            while data := await process.stdin.read(65536):
                room = args.quota - written[0]
                target.write(data[:max(room, 0)])
                written[0] += len(data)
                if written[0] > args.quota:
                    process.stderr.write(b"cat: write error: No space left on device\n")
                    process.exit(1)
                    return
        process.exit(0)

    async def run(process: asyncssh.SSHServerProcess) -> None:
        command = process.command or "true"
        if args.quota is not None and command.startswith("cat > "):
            await full_disk(process, command[len("cat > "):].strip("'"))
            return
        proc = await asyncio.create_subprocess_shell(command, cwd=args.home, env=env, stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

        async def feed() -> None:
            try:
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass

        async def copy(source: asyncio.StreamReader, target) -> None:  # noqa: ANN001
            while data := await source.read(65536):
                target.write(data)

        # Every byte of output is sent before the exit status (redirect() can lose the tail).
        await asyncio.gather(feed(), copy(proc.stdout, process.stdout), copy(proc.stderr, process.stderr))
        process.exit(await proc.wait())

    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys, process_factory=run, encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()


def make_keys(folder: Path) -> Path:
    """A throw-away host key and user key (``host_key``, ``user_key``, ``other_key``) in ``folder``."""
    for name in ("host_key", "user_key", "other_key"):
        if not (folder / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    return folder


def start(keys: Path, home: Path, python: str, *extra: str) -> tuple[subprocess.Popen, int]:
    """This server in a child process, serving ``home`` as the board; returns the process and its port."""
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, __file__, str(keys / "host_key"), str(keys / "user_key.pub"),
                                str(home), "--python", python, *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"the SSH server did not start: {process.stderr.read()}")
    return process, int(line)


def ssh_config(keys: Path, folder: Path, boards: dict[str, int]) -> Path:
    """An ssh config (and its known_hosts) naming each board alias at its port, as a user keeps them."""
    host_key = (keys / "host_key.pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text("".join(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n" for port in boards.values()))
    config = folder / "ssh_config"
    config.write_text("\n".join(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User tester\n  IdentityFile {keys / 'user_key'}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
        for name, port in boards.items()))
    config.chmod(0o600)
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host_key")
    parser.add_argument("authorized_keys")
    parser.add_argument("home")
    parser.add_argument("--python", default=None)
    parser.add_argument("--quota", type=int, default=None)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
