"""`compress bench MODEL.onnx --profile P`: measure any ONNX model the way a target runs it.

An encoder (or any model) is timed one inference at a time; a causal LM exported with its KV
cache (``past_key_values.*`` inputs) is timed generating: time to first token, time per output
token and tokens per second (export/generation_bench.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from export.runtime import DEFAULT_PROFILE

from export.base.errors import CompressError


_POSITIVE = click.IntRange(min=1)


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profile_name", default=DEFAULT_PROFILE, show_default=True,
              help="Target profile (name, alias or YAML file): providers, threads and workload.")
@click.option("--batch-size", type=_POSITIVE, default=None, help="Override the profile's batch size.")
@click.option("--sequence-length", type=_POSITIVE, default=None, help="Override the profile's sequence length.")
@click.option("--prompt-length", type=_POSITIVE, default=None,
              help="Generation models: prompt tokens (default: the profile's workload.generation, else 128).")
@click.option("--new-tokens", type=_POSITIVE, default=None,
              help="Generation models: tokens generated per run (default: the profile's, else 64).")
@click.option("--runs", type=_POSITIVE, default=None, help="Timed runs  [default: 100; 10 generations]")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Untimed warm-up runs  [default: 10; 2 generations]")
@click.option("--inputs", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="An .npz of real samples, one array per model input (replaces the synthetic inputs).")
@click.option("--compare", "other", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Another ONNX model to measure in the same process, runs interleaved; reports the speed ratio.")
@click.option("--threads", type=_POSITIVE, default=None, help="Intra-op threads (default: the profile's, else ORT's).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report JSON here (atomically).")
@click.option("--on", "target", default=None, metavar="ssh://USER@BOARD",
              help="Measure on that board over SSH (or a board named in devices.yaml): the report is the board's.")
@click.option("--sign", "key", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the report with this private key (compress keys new), where it is measured: "
                   "gate --trust KEY.pub then believes its host and numbers.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout instead of the table.")
def bench(model: Path, profile_name: str, batch_size: int | None, sequence_length: int | None,
          prompt_length: int | None, new_tokens: int | None, runs: int | None, warmup: int | None,
          inputs: Path | None, other: Path | None, threads: int | None, output: Path | None, target: str | None,
          key: Path | None, as_json: bool) -> None:
    """Benchmark MODEL.onnx with a profile's execution providers, threads and workload.

    Records latency percentiles, throughput, memory, model size and what really ran (the
    providers the session used, the host CPU/GPU, library versions). A causal LM with a KV cache
    is measured generating greedily: time to first token, time per output token, tokens/s.
    Progress goes to stderr.
    """
    from export.runtime.profiles import load_profile
    from export.runtime.release_kind import kind_of_model

    profile = load_profile(profile_name)
    kind = kind_of_model(model)
    workload = {"--batch-size": batch_size, "--sequence-length": sequence_length, "--inputs": inputs,
                "--prompt-length": prompt_length, "--new-tokens": new_tokens}
    kind.check_workload_options(model, [name for name, value in workload.items() if value is not None])
    default_runs, default_warmup = kind.default_runs
    shape = {name[2:].replace("-", "_"): value for name, value in workload.items() if name in kind.workload_options}
    runs, warmup = runs or default_runs, default_warmup if warmup is None else warmup
    if target is not None:
        from export.remote import parse_target, remote_bench
        from export.runtime.release_kind import read_any_report

        if inputs is not None:
            raise CompressError("--inputs with --on: the samples file is not sent to the board; drop one of them")
        board = parse_target(target)
        if board.key and key is not None:
            raise CompressError(f"--sign: {board.label} signs its reports with its own key (devices.yaml key:); "
                                "drop --sign")
        click.echo(f"measuring on {board.label} over SSH ...", err=True)
        measured = remote_bench(board, model, Path(profile.source), other=other, runs=runs, warmup=warmup,
                                threads=threads, **shape)
        report = read_any_report(json.dumps(measured))
        # A report the board signed is kept as it came: a re-serialised one might no longer match its signature.
        payload = measured if board.key else report.to_dict()
    else:
        report = kind.bench(model, profile, runs=runs, warmup=warmup, threads=threads, progress=True, other=other,
                            **shape)
        payload = report.to_dict()
    if key is not None:
        from export.runtime.signing import sign_report

        payload = sign_report(payload, key)
    if output is not None:
        from export.base.files import atomic_write_json

        atomic_write_json(output, payload)
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return
    kind.print_report(report)
    if output is not None:
        click.echo(f"report written to {output}", err=True)
