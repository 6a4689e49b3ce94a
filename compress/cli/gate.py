"""`compress gate REPORT.json --profile P`: the release verdict, as an exit code for CI."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profile_name", required=True, help="Target profile (name, alias or YAML file).")
@click.option("--quality", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Quality evidence JSON (teacher_agreement, metric, quantization_drop; a stage.json works).")
@click.option("--model", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The model the report measured: its sha256 and size must match the report's. Default: the "
                   "report's own model path, when that file exists.")
@click.option("--trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="KEY.pub",
              help="Believe only a report signed where it was measured (bench --sign) by one of these keys.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the gate report JSON here (atomically).")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write JUnit XML here: one testcase per budget.")
@click.option("--json", "as_json", is_flag=True, help="Print the gate report JSON on stdout instead of the table.")
def gate(report_path: Path, profile_name: str, quality: Path | None, model: Path | None, trust: tuple[Path, ...],
         output: Path | None, junit: Path | None, as_json: bool) -> None:
    """Check a bench report (encoder or generation) against a profile's budgets.

    \b
    Exit codes: 0 pass, 1 fail (a budget missed), 2 bad input (an unreadable
    or impossible report, a model that is not the one measured), 3 unverified:
    measured on hardware that is not the profile's (verify on the target), or
    the profile budgets quality and no --quality evidence was given.
    Budgets the evidence cannot speak to are "not checked", never passed.
    """
    from export.runtime.gate import QualityEvidence, gate as run_gate, print_gate, read_gate_input, write_junit
    from export.runtime.profiles import load_profile

    from export.base.report_json import read_json_object

    # An encoder's bench or a language model's generation bench; of a comparison, its first model.
    raw = read_json_object(report_path, "bench report")
    kind = raw.get("kind")
    if trust:
        from export.runtime.signing import check_report_signature, read_public_key

        signer = check_report_signature(raw, [read_public_key(key) for key in trust])
        click.echo(f"report signed by {signer}, a trusted key", err=True)
    report = read_gate_input(report_path)
    if kind in ("comparison", "generation_comparison"):
        click.echo(f"gating {Path(report.model.path).name}, the first model of the comparison", err=True)
    profile = load_profile(profile_name)
    evidence = QualityEvidence.from_json(quality) if quality is not None else None
    verdict = run_gate(report, profile, evidence, model=model)
    if output is not None:
        verdict.to_json(output)
    if junit is not None:
        write_junit(verdict, junit)
    if as_json:
        click.echo(verdict.to_json())
    else:
        print_gate(verdict)
    # sys.exit, not ctx.exit: main() runs click with standalone_mode=False, where click turns
    # ctx.exit(n) into a return value that main() does not pass on.
    sys.stdout.flush()
    sys.exit(verdict.exit_code)
