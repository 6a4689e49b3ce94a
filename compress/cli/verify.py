"""`compress verify ARCHIVE [--gate]`: check a release archive on the device."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=str))
@click.option("--gate", "run_gate", is_flag=True,
              help="Also benchmark here and gate against the archive's profile; exit code follows the verdict.")
@click.option("--profile", default=None, help="With --gate: gate against this profile (name or YAML) instead.")
@click.option("--runs", default=None, type=int,
              help="With --gate: timed benchmark runs  [default: 100; 10 generations for a language model]")
@click.option("--warmup", default=None, type=int,
              help="With --gate: warm-up runs  [default: 10; 2 for a language model]")
@click.option("--trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="KEY.pub",
              help="A public key whose signature the archive must carry (repeat for several).")
@click.option("--require-signature", is_flag=True, help="Refuse an unsigned archive (with --trust).")
@click.option("--sha256", "digest", default=None, metavar="HEX",
              help="The archive's sha256 as published elsewhere (a release page, a ticket); it must match.")
@click.option("--on", "target", default=None, metavar="ssh://USER@BOARD",
              help="Verify (and with --gate, benchmark and gate) on that board over SSH: the verdict is the board's.")
@click.option("--libraries", is_flag=True,
              help="Also load the release with each library its model card names (sentence-transformers, "
                   "Optimum, ONNX Runtime GenAI, llama.cpp), where installed (with --on: on the board), and "
                   "compare the answer with the build host's.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON on stdout.")
def verify(archive: str, run_gate: bool, profile: str | None, runs: int | None, warmup: int | None,
           trust: tuple[Path, ...], require_signature: bool, digest: str | None, target: str | None,
           libraries: bool, as_json: bool) -> None:
    """Check ARCHIVE: safe extraction, every file's sha256, the model's signature and a reference output.

    \b
    Exit codes: 0 verified (and, with --gate, gate passed), 1 gate failed,
    2 the archive is damaged, tampered with, unsafe, not signed by a trusted
    key (with --trust) or not the published digest (with --sha256),
    3 gate unverified on this hardware.
    """
    from export.runtime.verify import verify_archive

    if target is not None:
        report = _verify_on_board(target, Path(archive), run_gate, profile, runs, warmup, list(trust),
                                  require_signature, digest, libraries)
    else:
        report = verify_archive(archive, gate=run_gate, profile=profile, runs=runs, warmup=warmup, trust=list(trust),
                                require_signature=require_signature, sha256=digest, libraries=libraries)
    if as_json:
        click.echo(report.to_json())
    else:
        example = report.example
        click.echo(f"{report.name} {report.version} ({report.task}, {report.precision}, profile {report.profile})")
        click.echo(f"archive sha256 {report.archive_sha256}" + (" (the published digest)" if digest else ""))
        click.echo(f"manifest: {report.signature}")
        click.echo(f"files: {report.files_checked} match manifest.json ({report.bytes_checked:,} bytes, sha256 checked)")
        click.echo(f"model: loads on {', '.join(example.providers_used)}; inputs and outputs match the manifest")
        if example.tokens is not None:
            click.echo(f"reference output: greedy answer {example.matching_tokens}/{example.reference_tokens} tokens "
                       f"identical to the build host's (first {example.min_matching_tokens} required)")
            click.echo(f"example: {example.sentence!r} -> {example.text!r}")
        else:
            click.echo(f"reference output: cosine {example.cosine_to_reference:.6f} to the build host's "
                       f"(>= {example.min_cosine} required)")
        if example.ort_cosine is not None:
            click.echo(f"ORT format (ONNX Runtime Mobile): loads; cosine {example.ort_cosine:.6f} to the .onnx's answer")
        if example.pair_cosine is not None:
            click.echo(f"example: cosine between the two example sentences {example.pair_cosine:.4f}")
        if example.top_label is not None:
            click.echo(f"example: top label {example.top_label}")
        for check in report.libraries:
            click.echo(f"{check.library}: {check.status} ({check.detail})")
        if report.loads_with and not report.libraries:
            click.echo(f"also loads in: {', '.join(report.loads_with)} (check here with --libraries)")
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        if report.gate is not None:
            gate = report.gate
            click.echo(f"gate {gate['profile']}: {gate['verdict'].upper()} (measured on {gate['bench']['host']})")
            for check in gate["checks"]:
                measured = "-" if check["measured"] is None else f"{check['measured']:.4g}"
                budget = "-" if check["budget"] is None else f"{check['comparison']} {check['budget']:g}"
                click.echo(f"  {check['name']:<32} {measured:>10} {check['unit']:<12} {budget:<14} {check['status']}")
            for reason in gate["reasons"]:
                click.echo(f"  - {reason}")
    if report.exit_code:
        sys.exit(report.exit_code)


def _verify_on_board(target: str, archive: Path, gate: bool, profile: str | None, runs: int | None,
                     warmup: int | None, trust: list[Path], require_signature: bool, digest: str | None,
                     libraries: bool) -> object:
    from export.base.errors import CompressError
    from export.base.files import sha256_file
    from export.remote import parse_target, remote_verify
    from export.runtime.profiles import load_profile
    from export.runtime.verify import VerifyReport

    if digest is not None and sha256_file(archive) != digest.strip().lower():
        raise CompressError(f"{archive}: sha256 {sha256_file(archive)} is not the published {digest.strip().lower()}")
    board = parse_target(target)
    profile_file = Path(load_profile(profile).source) if profile else None
    click.echo(f"verifying on {board.label} over SSH ...", err=True)
    data, run = remote_verify(board, archive, gate=gate, profile_file=profile_file, runs=runs, warmup=warmup,
                              trust=trust, require_signature=require_signature, libraries=libraries)
    report = VerifyReport.from_dict(data)
    report.archive = str(archive)
    report.notes.append(f"verified on {run.target} over SSH, runtime {run.runtime_sha256[:16]}, "
                        f"{run.files_checked} files checked on arrival")
    return report
