"""The ``compress`` command line.

Each command lives in its own module under ``compress.cli`` and is imported only when it is
invoked, so ``compress --help`` and ``compress bench`` start without importing torch.
Commands parse their options, call one library function and print; the work itself is
callable from Python.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from typing import NoReturn

import click

from compress import __version__
from compress.parallel import RankStopped
from export.base.errors import CompressError, did_you_mean

# name -> "module:attribute"; the order is the order of `compress --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("compress.cli.distill:distill", "Distill a teacher into a small student and run the release chain."),
    "prune": ("compress.cli.prune:prune", "Structurally prune heads, FFN neurons or layers of a model folder."),
    "export": ("compress.cli.export:export", "Export a Hugging Face model folder to ONNX and check parity."),
    "quantize": ("compress.cli.quantize:quantize", "Quantize an ONNX model (int8, fp16) or a model folder (bitsandbytes)."),
    "bench": ("compress.cli.bench:bench", "Benchmark any ONNX model the way a target profile runs it."),
    "gate": ("compress.cli.gate:gate", "Turn a bench report into a release verdict for a profile."),
    "package": ("compress.cli.package:package", "Pack a run directory into one verified archive for an edge team."),
    "verify": ("compress.cli.verify:verify", "Check an archive on the device; optionally re-run bench and gate there."),
    "profiles": ("compress.cli.profiles:profiles", "List and show target profiles."),
    "devices": ("compress.cli.devices:devices", "Check a board reached over SSH (for bench --on, verify --on)."),
    "keys": ("compress.cli.keys:keys", "Make a key pair that signs releases (package --sign, verify --trust)."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and name not in COMMANDS and not name.startswith("-"):
            raise click.UsageError(f"no command {name!r}{did_you_mean(name, COMMANDS)}; commands: {', '.join(COMMANDS)}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists every command without importing any of them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_line) for name, (_, help_line) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compress")
@click.option("--debug", is_flag=True, envvar="COMPRESS_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compress Hugging Face models for edge devices and gate their release.

    \b
    Exit codes: 0 ok or gate passed, 1 gate failed, 2 bad input or usage,
    3 gate unverified (measured on hardware that is not the profile's),
    4 internal error (a bug: run with --debug and report it),
    130 interrupted (Ctrl-C; re-run the same command to resume).
    """
    ctx.obj = {"debug": debug}


_INVOKED: list[str] = []


def invoked_args() -> list[str]:
    """The arguments this process's ``compress`` was run with (a command re-launches itself with them)."""
    return list(_INVOKED)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    _INVOKED[:] = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("COMPRESS_DEBUG"))
    try:
        # Without standalone mode, click returns ctx.exit()'s code instead of exiting with it.
        code = cli.main(args=argv, prog_name="compress", standalone_mode=False)
    except CompressError as exc:
        _fail(f"error: {exc}" if str(exc) and _reports_errors() else "", exc.exit_code, debug)
    except click.exceptions.Abort:
        _fail("interrupted", 130, False)
    except click.ClickException as exc:
        # Usage errors in one line, as every other error (click's own form takes three).
        _fail(f"error: {exc.format_message()}", exc.exit_code, False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130, False)
    except RankStopped:  # its files cleaned up on the way here: now end as the launcher's SIGTERM meant
        os.kill(os.getpid(), signal.SIGTERM)
    except Exception as exc:  # a bug, not bad input: say so in one line unless asked for more
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 4, debug)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    """One line on stderr and the exit code; with ``--debug`` the traceback first, and the same code."""
    if debug:
        traceback.print_exc()
    if message:
        click.echo(message, err=True)
        from compress.launch import REPORTED_MARK

        reported = os.environ.get(REPORTED_MARK)
        if reported and code == 2:  # tell the launcher rank 0 has said it, however the other ranks end
            open(reported, "a").close()
    sys.exit(code)


def _reports_errors() -> bool:
    """Under a launcher, rank 0 alone says what is wrong: every rank meets the same bad input."""
    return os.environ.get("RANK", "0") == "0"
