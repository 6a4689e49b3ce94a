"""`compress quantize MODEL.onnx --profile P --out FILE`: accuracy- and speed-aware quantization."""

from __future__ import annotations

import json
from pathlib import Path

import click

from export.runtime import DEFAULT_PROFILE

from export.quantize import METHODS


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", default=DEFAULT_PROFILE, show_default=True,
              help="Target profile: its precision is the default method, its ISA the int8 preset, "
                   "its max_quantization_drop the quality budget.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The .onnx file to write (a folder for bnb-int8/bnb-nf4).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="int8-dynamic, int8-static, fp16, int4-weight (ONNX); bnb-int8, bnb-nf4 (a Hugging Face "
                   "folder for PyTorch on a GPU). Default: the profile's precision.")
@click.option("--calibration-data", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="int8-static: texts to calibrate on (.txt/.jsonl/.csv/.tsv); default: the default corpus.")
@click.option("--no-compare", is_flag=True, help="Skip timing the result against the fp32 model on this host.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def quantize(model: Path, profile_name: str, out: Path, method: str | None, calibration_data: Path | None,
             no_compare: bool, as_json: bool) -> None:
    """Quantize MODEL.onnx for a target profile and measure what it costs and buys.

    Quality is measured against the fp32 model on held-out real text; when the drop exceeds the
    profile's budget, the most sensitive nodes are left unquantized until it fits. The result is
    timed against the fp32 model on this host in the same run, and a result that is not faster
    here is reported as such.
    """
    from export.runtime.profiles import load_profile
    from export.quantize import quantize_model

    profile = load_profile(profile_name)
    result = quantize_model(model, profile, out, method=method, calibration_data=calibration_data,
                            compare=not no_compare, progress=not as_json,
                            log=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    click.echo(f"wrote {result.out_path} ({result.method}{', ' + result.preset if result.preset else ''}): "
               f"{result.size_before_bytes / 2**20:.1f} -> {result.size_after_bytes / 2**20:.1f} MiB")
    budget = "within" if result.within_budget else "OVER"
    click.echo(f"quality vs fp32 on {result.samples} {result.sample_kind} samples: {result.metric} "
               f"{result.agreement:.4f}, drop {result.quality_drop:.4f} ({budget} the budget "
               f"{result.max_quantization_drop:.4f})")
    if result.excluded_nodes:
        click.echo(f"left unquantized ({len(result.excluded_nodes)}): "
                   f"{', '.join(n.name for n in result.excluded_nodes)}")
    if result.speed:
        s = result.speed
        click.echo(f"speed on this host ({s.host}, {s.workload}): fp32 p50 {s.fp32_p50_ms:.2f} ms, "
                   f"{result.method} p50 {s.quantized_p50_ms:.2f} ms -> {s.speedup:.2f}x ({s.verdict})")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
