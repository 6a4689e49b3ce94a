"""Commands whose bodies have not landed yet: they say so and exit 2, with no fake output."""

from __future__ import annotations

import click

from export.base.errors import CompressError


def not_implemented(name: str, summary: str) -> click.Command:
    @click.command(name=name, help=f"{summary}\n\nNot implemented yet.", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise CompressError(f"`compress {name}` is not implemented yet")

    return command
