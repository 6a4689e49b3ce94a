"""`compress bench MODEL.onnx --profile P`: measure any ONNX model the way a target runs it.

An encoder (or any model) is timed one inference at a time; a causal LM exported with its KV
cache (``past_key_values.*`` inputs) is timed generating: time to first token, time per output
token and tokens per second (export/generation_bench.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from export.base.errors import CompressError

_POSITIVE = click.IntRange(min=1)
# Defaults per kind of model: one generation is 64 tokens, so far fewer runs give stable numbers.
_RUNS = {"encoder": (100, 10), "generation": (10, 2)}


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profile_name", default="host", show_default=True,
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
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout instead of the table.")
def bench(model: Path, profile_name: str, batch_size: int | None, sequence_length: int | None,
          prompt_length: int | None, new_tokens: int | None, runs: int | None, warmup: int | None,
          inputs: Path | None, other: Path | None, threads: int | None, output: Path | None, as_json: bool) -> None:
    """Benchmark MODEL.onnx with a profile's execution providers, threads and workload.

    Records latency percentiles, throughput, memory, model size and what really ran (the
    providers the session used, the host CPU/GPU, library versions). A causal LM with a KV cache
    is measured generating greedily: time to first token, time per output token, tokens/s.
    Progress goes to stderr.
    """
    from export.runtime.generation import is_generation_model
    from export.runtime.profiles import load_profile

    profile = load_profile(profile_name)
    generation = is_generation_model(model)
    if generation:
        given = [name for name, value in (("--batch-size", batch_size), ("--sequence-length", sequence_length),
                                          ("--inputs", inputs)) if value is not None]
        if given:
            raise CompressError(f"{model.name} is a generation model: {', '.join(given)} does not apply "
                                "(use --prompt-length and --new-tokens)")
        if other is not None and not is_generation_model(other):
            raise CompressError(f"--compare {other} is not a generation model (no past_key_values.* inputs), "
                                f"{model.name} is")
        from export.runtime.generation_bench import compare_generation_bench, print_generation_report, run_generation_bench

        default_runs, default_warmup = _RUNS["generation"]
        options = dict(prompt_length=prompt_length, new_tokens=new_tokens, runs=runs or default_runs,
                       warmup=default_warmup if warmup is None else warmup, threads=threads, progress=True)
        report = (compare_generation_bench(model, other, profile, **options) if other
                  else run_generation_bench(model, profile, **options))
        show = print_generation_report
    else:
        if prompt_length is not None or new_tokens is not None:
            raise CompressError(f"--prompt-length and --new-tokens are for generation models (with past_key_values "
                                f"inputs); {model.name} is not one")
        from export.runtime.bench import compare_bench, print_report, run_bench

        default_runs, default_warmup = _RUNS["encoder"]
        options = dict(batch_size=batch_size, sequence_length=sequence_length, runs=runs or default_runs,
                       warmup=default_warmup if warmup is None else warmup, inputs=inputs, threads=threads,
                       progress=True)
        report = compare_bench(model, other, profile, **options) if other else run_bench(model, profile, **options)
        show = print_report
    if output is not None:
        report.to_json(output)
    if as_json:
        click.echo(report.to_json())
        return
    show(report)
    if output is not None:
        click.echo(f"report written to {output}", err=True)
