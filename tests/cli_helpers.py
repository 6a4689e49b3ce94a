"""Run the CLI the way the console script does, exit codes and error lines included."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from compress.cli import cli, main


def run_cli(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    """Invoke ``compress ARGS`` through ``main`` (so CompressError maps to exit 2) and capture output."""
    runner = CliRunner()
    return runner.invoke(_Entry(), args, catch_exceptions=False, env=env)


class _Entry:
    """Adapter: CliRunner wants a click command; ``main`` does the error mapping around ``cli``."""

    name = "compress"

    def main(self, args=None, prog_name=None, **_: object) -> None:
        main(list(args or []))

    def __getattr__(self, item: str):
        return getattr(cli, item)


def user_profile(where: Path, name: str, **quality: float) -> Path:
    """A copy of the host profile named ``name`` with ``quality`` budgets changed, as a user's YAML file."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "profiles" / "host.yaml").read_text())
    data["name"], data["aliases"] = name, []
    data["budgets"]["quality"].update(quality)
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
