"""`compress profiles list|show`."""

from __future__ import annotations

import json

import click
import yaml

from export.runtime.profiles import list_profiles, load_profile


@click.group()
def profiles() -> None:
    """List and show target profiles (a YAML file path works wherever a name does)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_command(as_json: bool) -> None:
    """List the shipped profiles with their device, precision and p95 budget."""
    shipped = list_profiles()
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in shipped], indent=2))
        return
    header = ("name", "aliases", "device", "precision", "p95 budget", "student")
    rows = [(p.name, ", ".join(p.aliases), f"{p.hardware.device}/{p.hardware.arch}", p.precision,
             f"{p.budgets.latency_ms.p95:g} ms" if p.budgets.latency_ms.p95 else "-", p.distill.student)
            for p in shipped]
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped or redirected: plain aligned columns, never cut, so `| grep jetson-orin-nano` finds it.
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return
    from rich.table import Table

    table = Table(*header)
    table.columns[0].no_wrap = True  # identifiers are never cut
    for row in rows:
        table.add_row(*row)
    console.print(table)


@profiles.command("show")
@click.argument("name_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show_command(name_or_file: str, as_json: bool) -> None:
    """Show one profile, validated, with its source file."""
    profile = load_profile(name_or_file)
    data = profile.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"# {profile.source}")
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
