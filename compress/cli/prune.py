"""`compress prune MODEL_DIR --out DIR`: structured pruning that shrinks the matrices."""

from __future__ import annotations

import json
from pathlib import Path

import click

from export.runtime import DEFAULT_PROFILE

_FRACTION = click.FloatRange(0.0, 1.0, max_open=True)


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the pruned model (safetensors, tokenizer, sentence-transformers files, stage.json).")
@click.option("--heads", type=_FRACTION, default=0.0, show_default=True,
              help="Fraction of all attention heads to remove (least important first; each layer keeps one).")
@click.option("--ffn", type=_FRACTION, default=0.0, show_default=True,
              help="Fraction of FFN neurons to remove from every layer.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Number of encoder layers to keep.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Texts to measure importance on (.txt/.jsonl/.csv/.tsv); default: the default corpus.")
@click.option("--teacher", default=None,
              help="Teacher folder or known name to measure importance and quality against; default: the "
                   "model itself before pruning.")
@click.option("--recover-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Recovery distillation steps against the teacher after pruning.")
@click.option("--magnitude", type=_FRACTION, default=0.0, show_default=True,
              help="Zero this fraction of the smallest weights of each encoder matrix. For size on disk after "
                   "compression ONLY: onnxruntime on CPU runs no faster with zeros.")
@click.option("--profile", "profile_name", default=DEFAULT_PROFILE, show_default=True,
              help="Profile the ONNX latency comparison runs with.")
@click.option("--no-compare", is_flag=True, help="Skip exporting both models to ONNX and timing them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def prune(model_dir: Path, out_dir: Path, heads: float, ffn: float, layers: int | None, data: Path | None,
          teacher: str | None, recover_steps: int, magnitude: float, profile_name: str, no_compare: bool,
          as_json: bool) -> None:
    """Structurally prune heads, FFN neurons or layers of a BERT-style model folder.

    Importance is measured on real text against the teacher (mask gradients for heads and
    neurons, ablation for layers); the weight matrices really shrink, so the ONNX model runs
    fewer FLOPs. Reports parameters, quality against the teacher on held-out text, and ONNX
    latency of the original and the pruned model measured in the same run.
    """
    from compress.encoder.prune import PruneConfig, prune_model
    from export.runtime.profiles import load_profile

    config = PruneConfig(heads=heads, ffn=ffn, layers=layers, data=data, teacher=teacher,
                         recover_steps=recover_steps, magnitude=magnitude, compare=not no_compare)
    result = prune_model(model_dir, out_dir, config, profile=load_profile(profile_name),
                         log=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    click.echo(f"wrote {result.out_dir}: {result.params_before:,} -> {result.params_after:,} parameters; "
               f"layers {result.layers_before} -> {result.layers_after}, heads {result.heads_before} -> "
               f"{result.heads_after} {result.heads_per_layer}, FFN {result.ffn_before} -> {result.ffn_after}")
    for point in result.quality:
        extra = f", neighbours {point.neighbour_agreement:.3f}" if point.neighbour_agreement is not None else ""
        click.echo(f"quality vs teacher ({point.stage}): {point.metric} {point.value:.4f}{extra}")
    if result.latency:
        lat = result.latency
        click.echo(f"ONNX p50 on this host ({lat.host}): {lat.original_p50_ms:.2f} -> {lat.pruned_p50_ms:.2f} ms "
                   f"({lat.speedup:.2f}x)")
    if result.magnitude:
        mag = result.magnitude
        click.echo(f"magnitude: {mag.zeroed_parameters:,} weights zeroed; compressed weights "
                   f"{mag.compressed_bytes_before / 2**20:.2f} -> {mag.compressed_bytes_after / 2**20:.2f} MiB")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
