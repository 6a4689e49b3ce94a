"""How to quantize a small language model without losing its choices: SmolLM2-135M, side by side.

The teacher of the LM default job (its fp32 ONNX export in RUN_DIR/teacher) quantized several ways,
each scored on the run's held-out texts against the fp32 model (ONNX perplexity ratio and
next-token agreement: the share of positions whose most likely next token is unchanged) and timed
generating, all models interleaved in one process (5 runs each, 128-token prompt, 64 new tokens):

* int4 weight-only (MatMulNBits, int8 compute), block 32; block 16 with the LM head in 8 bits;
* 8-bit weight-only (MatMulNBits bits=8, block 32) with int8 compute (accuracy level 4) and with
  fp32 compute (accuracy level 1);
* int8 dynamic (onnxruntime's quantize_dynamic: int8 weights, activations quantized at run time),
  per-tensor and per-channel weights.

    python benchmarks/lm_teacher_quantization.py [--run runs/raspberry-pi-5]

Needs a finished LM default job (python benchmarks/lm_default_job.py). Prints a table and writes
benchmarks/results/lm_teacher_quantization.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

from export.lm_export import MODEL_FILE, quiet_export
from compress.lm.stage import read_held_out_texts
from export.lm_quantize import Int4Setting, expose_constant_weights, write_quantized
from export.lm_scores import onnx_token_scores
from export.runtime.generation_bench import bench_side_by_side
from export.runtime.host import detect_host
from export.runtime.onnx_file import onnx_size_bytes
from export.runtime.profiles import load_profile

TEXTS = 64


def _with_quantizer(source: Path, folder: Path, quantize) -> Path:
    """A folder like the export's with the graph rewritten by ``quantize(model, target)``."""
    import shutil

    import onnx

    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix in (".json", ".jinja", ".txt") and path.name != "stage.json":
            shutil.copyfile(path, folder / path.name)
    model = onnx.load(str(source / MODEL_FILE))
    expose_constant_weights(model)
    with quiet_export(root=True):
        quantize(model, folder / MODEL_FILE)
    return folder / MODEL_FILE


def _nbits8(accuracy_level: int):
    def quantize(model, target: Path) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=False, accuracy_level=accuracy_level,
                                         op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return quantize


def _dynamic(per_channel: bool):
    def quantize(model, target: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(model, target, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    return quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "raspberry-pi-5")
    parser.add_argument("--runs", type=int, default=5, help="timed generations per model (interleaved)")
    args = parser.parse_args()
    record = ResultRecord.start("lm_teacher_quantization")
    teacher = args.run / "teacher"
    texts = read_held_out_texts(args.run / "distill" / "held_out.jsonl")[:TEXTS]
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as scratch:
        base = Path(scratch)
        models = {
            "int4, block 32": write_quantized(teacher, base / "int4-b32", "int4-weight", Int4Setting(32)),
            "int4, block 16, LM head int8": write_quantized(teacher, base / "int4-b16h8", "int4-weight",
                                                            Int4Setting(16, head="int8")),
            "8-bit weights, int8 compute (int8-weight)": write_quantized(teacher, base / "int8w", "int8-weight"),
            "8-bit weights, fp32 compute": _with_quantizer(teacher, base / "int8w-acc1", _nbits8(1)),
            "int8 dynamic, per-tensor (int8-dynamic)": write_quantized(teacher, base / "dyn", "int8-dynamic"),
            "int8 dynamic, per-channel": _with_quantizer(teacher, base / "dyn-pc", _dynamic(True)),
        }
        print("scoring ...", file=sys.stderr)
        reference = onnx_token_scores(teacher, texts)
        scores = {name: onnx_token_scores(path.parent, texts) for name, path in models.items()}
        print("timing, interleaved ...", file=sys.stderr)
        reports = bench_side_by_side([teacher / MODEL_FILE, *models.values()], load_profile("rpi5"), runs=args.runs,
                                     warmup=1, threads=2)
        results = {"fp32": {"size_mb": round(onnx_size_bytes(teacher / MODEL_FILE) / 2**20, 1),
                            "tokens_per_s": round(reports[0].tokens_per_s, 2), "speed_vs_fp32": 1.0,
                            "perplexity_ratio": 1.0, "next_token_agreement": 1.0}}
        for (name, path), report in zip(models.items(), reports[1:]):
            results[name] = {"size_mb": round(onnx_size_bytes(path) / 2**20, 1),
                             "tokens_per_s": round(report.tokens_per_s, 2),
                             "speed_vs_fp32": round(report.tokens_per_s / reports[0].tokens_per_s, 3),
                             "perplexity_ratio": round(scores[name].perplexity / reference.perplexity, 4),
                             "next_token_agreement": round(scores[name].agreement(reference), 4)}
    host = detect_host()
    record.finish(RESULTS_DIR / "lm_teacher_quantization.json", host, teacher="smollm2-135m-instruct",
                  texts=len(texts), teacher_perplexity=round(reference.perplexity, 3),
                  workload={"prompt_length": 128, "new_tokens": 64, "threads": 2, "runs": args.runs},
                  results=results)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SmolLM2-135M quantized · {host.describe()} · {len(texts)} held-out texts",
                  title_justify="left")
    for column in ("weights", "MiB", "tokens/s", "vs fp32", "perplexity", "agreement"):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['size_mb']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['speed_vs_fp32']:.2f}x",
                      f"{r['perplexity_ratio']:.3f}x", f"{r['next_token_agreement']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
