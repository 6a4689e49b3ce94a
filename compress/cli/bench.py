"""`compress bench MODEL.onnx --profile P`: measure any ONNX model the way a target runs it."""

from __future__ import annotations

from pathlib import Path

import click

_POSITIVE = click.IntRange(min=1)


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profile_name", default="host", show_default=True,
              help="Target profile (name, alias or YAML file): providers, threads and workload.")
@click.option("--batch-size", type=_POSITIVE, default=None, help="Override the profile's batch size.")
@click.option("--sequence-length", type=_POSITIVE, default=None, help="Override the profile's sequence length.")
@click.option("--runs", type=_POSITIVE, default=100, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed warm-up runs.")
@click.option("--inputs", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="An .npz of real samples, one array per model input (replaces the synthetic inputs).")
@click.option("--compare", "other", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Another ONNX model to measure in the same process, runs interleaved; reports the speed ratio.")
@click.option("--threads", type=_POSITIVE, default=None, help="Intra-op threads (default: the profile's, else ORT's).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report JSON here (atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout instead of the table.")
def bench(model: Path, profile_name: str, batch_size: int | None, sequence_length: int | None, runs: int,
          warmup: int, inputs: Path | None, other: Path | None, threads: int | None, output: Path | None,
          as_json: bool) -> None:
    """Benchmark MODEL.onnx with a profile's execution providers, threads and workload.

    Records latency percentiles, throughput, memory, model size and what really ran (the
    providers the session used, the host CPU/GPU, library versions). Progress goes to stderr.
    """
    from export.bench import compare_bench, print_report, run_bench
    from export.profiles import load_profile

    profile = load_profile(profile_name)
    options = dict(batch_size=batch_size, sequence_length=sequence_length, runs=runs, warmup=warmup,
                   inputs=inputs, threads=threads, progress=True)
    report = compare_bench(model, other, profile, **options) if other else run_bench(model, profile, **options)
    if output is not None:
        report.to_json(output)
    if as_json:
        click.echo(report.to_json())
        return
    print_report(report)
    if output is not None:
        click.echo(f"report written to {output}", err=True)
