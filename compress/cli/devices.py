"""`compress devices check ssh://user@board`: what a board has for measuring, and what it lacks."""

from __future__ import annotations

import json

import click


@click.group()
def devices() -> None:
    """Boards reached over SSH, where `bench --on` and `verify --on` measure."""


@devices.command("check")
@click.argument("target", metavar="ssh://USER@BOARD")
@click.option("--json", "as_json", is_flag=True, help="Print the board's facts as JSON.")
def check(target: str, as_json: bool) -> None:
    """Report the board's CPU, ISA flags, GPU, memory, Python, onnxruntime and its providers.

    Exit 0 when it has everything `bench --on` and `verify --on` need; 2 with the pip line
    that installs what it lacks.
    """
    from export.base.errors import CompressError
    from export.remote import check_device, parse_target

    facts = check_device(parse_target(target))
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
    else:
        host = facts.get("host") or {}
        click.echo(f"{facts['target']}: {host.get('cpu_model', '?')}, {host.get('usable_cores', '?')} cores "
                   f"{host.get('arch', '?')}" + (f", board {host['board_model']}" if host.get("board_model") else ""))
        if host.get("gpus"):
            click.echo(f"GPU: {', '.join(host['gpus'])}")
        flags = [f for f in host.get("cpu_flags", []) if f in ("avx2", "avx512f", "avx512_vnni", "amx_int8", "asimd",
                                                                 "asimddp", "fp16", "sve")]
        click.echo(f"ISA: {', '.join(flags) or 'none of note'}; memory {_gib(host.get('memory_total_mb'))}; "
                   f"free disk {_gib(facts.get('free_disk_mb'))}")
        packages = facts.get("packages") if isinstance(facts.get("packages"), dict) else {}
        click.echo(f"python {facts.get('python', '?')}; " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
        if facts.get("providers"):
            click.echo(f"onnxruntime providers: {', '.join(facts['providers'])}")
        click.echo(f"runtime sent: sha256 {facts['runtime_sha256'][:16]}")
    if facts.get("missing"):
        raise CompressError(f"{facts['target']} lacks {', '.join(facts['missing'])}: on the board, "
                            f"pip install {' '.join(facts['missing'])}")


def _gib(mib: object) -> str:
    """A board reports what it can: a number it could not read (no psutil, no /proc) is shown as unknown."""
    return f"{mib / 1024:.1f} GiB" if isinstance(mib, (int, float)) and not isinstance(mib, bool) else "unknown"
