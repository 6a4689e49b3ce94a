"""`compress keys new NAME`: a key pair that signs releases (`package --sign`, `verify --trust`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Make keys that sign releases, so a verdict cannot be forged by editing an archive."""


@keys.command("new")
@click.argument("name", type=click.Path(dir_okay=False, path_type=Path))
def new(name: Path) -> None:
    """Write NAME.key (private: keep it where releases are packaged) and NAME.pub (give it to the edge team).

    \b
    compress keys new release-2026
    compress package runs/jetson-orin-nano --out dist --sign release-2026.key
    compress verify dist/ARCHIVE.tar.gz --trust release-2026.pub --require-signature
    """
    from export.base.errors import CompressError
    from export.runtime.signing import new_key_pair

    if not name.name or name.name in (".", ".."):
        raise CompressError(f"key name {str(name)!r}: give the key a file name, e.g. release-2026")
    pair = new_key_pair(name.with_suffix(".key"))
    click.echo(f"private key {pair.private} (mode 0600: keep it secret)")
    click.echo(f"public key  {pair.public} (id {pair.key_id}: share it)")
