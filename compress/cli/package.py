"""`compress package RUN_DIR --out DIR`: one verified archive for the edge team."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder to write NAME-VERSION-PROFILE.tar.gz into.")
@click.option("--name", default=None, help="Release name (default: the teacher's name + '-distilled').")
@click.option("--version", "version", default=None, help="Release version (default: the run's date, YYYY.MM.DD).")
@click.option("--allow-failed", is_flag=True,
              help="Package a run whose gate failed; the manifest and model card say so loudly.")
@click.option("--sign", "key", default=None, type=click.Path(dir_okay=False, path_type=str), metavar="KEY",
              help="Sign manifest.json with this private key (compress keys new); verify --trust KEY.pub checks it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def package(run_dir: str, out_dir: str, name: str | None, version: str | None, allow_failed: bool, key: str | None,
            as_json: bool) -> None:
    """Pack a finished run directory into NAME-VERSION-PROFILE.tar.gz.

    The archive holds the model, its tokenizer, manifest.json (sha256 of every file, inputs and
    outputs, quality, benchmark, gate verdict), MODEL_CARD.md, reports/ and example/. Packaging
    the same run twice gives the same bytes.
    """
    from export.package import package_run

    result = package_run(run_dir, out_dir, name=name, version=version, allow_failed=allow_failed, sign=key)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(f"{result.path}  {result.size:,} bytes  sha256 {result.sha256}")
        for profile, gate in sorted(result.manifest.gates.items()):
            click.echo(f"gate {profile}: {gate.verdict}")
        click.echo(f"signed by key {result.signed_by}" if result.signed_by else
                   "unsigned (sign with --sign KEY; make a key with `compress keys new`)")
    if result.manifest.released_despite_failed_gate:
        click.echo("warning: this release FAILED its gate and was packaged only because of --allow-failed", err=True)
