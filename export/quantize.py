"""Quantize an ONNX model for a target profile, measuring what it costs and what it buys.

Methods (the profile's ``precision`` is the default):

* ``int8-dynamic``: ONNX Runtime dynamic quantization through optimum's ``ORTQuantizer`` with the
  profile's ISA preset (``arm64``, ``avx2``, ``avx512_vnni``), weights per channel. CPU targets only.
* ``int8-static``: calibrated on real text (``--calibration-data`` or the default corpus's
  training split, never the held-out texts quality is measured on). CPU targets get QOperator
  graphs with uint8 activations over MatMul/Gemm/Gather: int8 activations in QDQ form were slower
  than fp32 on x86 CPUs (STACK.md trap 4). TensorRT targets get symmetric int8/int8 QDQ, the form
  TensorRT consumes.
* ``fp16``: weights and compute in half precision with fp32 inputs and outputs
  (``keep_io_types``), for GPU targets. A CPU runs it, mostly no faster.
* ``int4-weight``: 4-bit block-wise weight-only quantization of MatMul weights (``MatMulNBits``).
* ``bnb-int8`` / ``bnb-nf4``: bitsandbytes on a Hugging Face folder, for PyTorch on a GPU
  (:mod:`export.bnb`); such a folder cannot be exported to ONNX.

Accuracy-aware: the result is compared with the fp32 model on held-out real text (batch 1, each
text at its own length, as an edge caller runs it). When the drop (``1 - agreement``: mean cosine
for embeddings, argmax agreement for classifiers) exceeds the profile's
``budgets.quality.max_quantization_drop``, the quantizable nodes are ranked by how much error
quantizing each one alone adds to its own output (estimated from the fp32 model's real
activations on a few texts, with the method's quantization scheme applied in numpy), and the
most sensitive are excluded, a few more at each retry, until the drop fits the budget or half
the nodes are excluded. What was excluded and the final drop are reported.

Speed-aware: the result is benchmarked against the fp32 model on this host in the same process,
runs interleaved (``export.runtime.bench.compare_bench``). A quantized model that is not faster here is
reported as such, with the host it was measured on.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.base.files import make_folder
from export.st_folder import copy_module_files
from export.base.errors import CompressError
from export.base.quiet import quiet_libraries
from export.base.records import FileRef, StageRecord, read_stage_result
from export.base.stages import StageOutput, run_stage
from export.onnx_graph import check_fp32_model
from export.compare_outputs import OutputView, open_session, run_outputs
from export.quantize_sensitivity import INT4_BLOCK_SIZE, SENSITIVITY_SAMPLES, candidate_nodes, rank_sensitivity, scheme_for
from export.quantize_report import Attempt, ExcludedNode, QuantizeResult, SpeedComparison
from export.runtime.agreement import max_abs_diff
from export.runtime.profiles import Profile
from export.runtime.samples import (DEFAULT_CALIBRATION_SAMPLES, DEFAULT_EVAL_SAMPLES, Feed, Samples, TextEncoder,
                            model_samples, read_texts, training_texts)

ONNX_METHODS = ("int8-dynamic", "int8-static", "fp16", "int4-weight")
BNB_METHODS = ("bnb-int8", "bnb-nf4")
METHODS = ONNX_METHODS + BNB_METHODS
# Files that travel with an ONNX model so it can be used without the source folder.
SIDECAR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
                 "sentencepiece.bpe.model", "spiece.model", "config.json", "sentence_bert_config.json")
MAX_EXCLUDED_FRACTION = 0.5
DEFAULT_COMPARE_RUNS = 50
DEFAULT_COMPARE_WARMUP = 5
# Speed-ups within this band of 1.0 are measurement noise on a shared machine, not a difference.
SPEED_NOISE = 0.05


def resolve_method(profile: Profile, method: str | None) -> str:
    """The method to run: ``method``, else the profile's precision."""
    chosen = method or profile.precision
    if chosen == "fp32":
        raise CompressError(f"profile {profile.name} asks for fp32: there is nothing to quantize "
                            f"(pass --method {'|'.join(ONNX_METHODS)})")
    if chosen not in METHODS:
        raise CompressError(f"unknown quantization method {chosen!r}; choose one of {', '.join(METHODS)}")
    if chosen == "int8-dynamic" and profile.quantization_preset == "tensorrt":
        raise CompressError(f"int8-dynamic runs on CPUs only; profile {profile.name} targets a GPU "
                            "(use int8-static for TensorRT, or fp16)")
    return chosen


def _quiet():
    """onnxruntime's quantizer logs and prints a lot; keep it off the user's terminal."""
    return quiet_libraries("optimum", "onnxruntime", root=True)


def int8_config(method: str, preset: str, exclude: Sequence[str]) -> Any:
    """The optimum QuantizationConfig for ``method`` on a target with ``preset``."""
    from onnxruntime.quantization import QuantFormat, QuantizationMode, QuantType
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, QuantizationConfig

    if method == "int8-dynamic":
        factory = {"arm64": AutoQuantizationConfig.arm64, "avx2": AutoQuantizationConfig.avx2,
                   "avx512_vnni": AutoQuantizationConfig.avx512_vnni}[preset]
        return factory(is_static=False, per_channel=True, nodes_to_exclude=list(exclude))
    if preset == "tensorrt":
        return AutoQuantizationConfig.tensorrt(per_channel=True, nodes_to_exclude=list(exclude))
    # CPU static: QOperator with uint8 activations on the ops that carry the FLOPs (STACK.md trap 4).
    return QuantizationConfig(
        is_static=True, format=QuantFormat.QOperator, mode=QuantizationMode.QLinearOps,
        activations_dtype=QuantType.QUInt8, activations_symmetric=False, weights_dtype=QuantType.QInt8,
        weights_symmetric=True, per_channel=True, reduce_range=False, nodes_to_exclude=list(exclude),
        operators_to_quantize=["MatMul", "Gemm", "Gather"],
    )


def calibrate(source: Path, feeds: Sequence[Feed], config: Any, work_dir: Path) -> Any:
    """MinMax activation ranges of the fp32 model at ``source`` over ``feeds`` (batch-1 feeds)."""
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import CalibrationConfig

    # A CalibrationConfig built directly plus a list of dicts needs no `datasets` (STACK.md trap 6).
    calibration = CalibrationConfig(dataset_name="texts", dataset_config_name="texts", dataset_split="calibration",
                                    dataset_num_samples=len(feeds), method=CalibrationMethod.MinMax)
    rows = [{name: array[0] for name, array in feed.items()} for feed in feeds]
    with _quiet():
        quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
        return quantizer.fit(dataset=rows, calibration_config=calibration,
                             onnx_augmented_model_name=str(work_dir / "augmented.onnx"),
                             operators_to_quantize=config.operators_to_quantize,
                             force_symmetric_range=config.activations_symmetric)


def _ranges_dict(ranges: Any) -> dict[str, tuple[float, float]]:
    if ranges is None:
        return {}
    data = getattr(ranges, "data", ranges)
    out = {}
    for name, value in data.items():
        pair = getattr(value, "range_value", value)
        out[name] = (float(np.asarray(pair[0]).min()), float(np.asarray(pair[1]).max()))
    return out


def quantize_file(source: Path, target: Path, method: str, preset: str | None, exclude: Sequence[str],
                  ranges: Any = None) -> None:
    """Write ``source`` quantized with ``method`` to ``target``, leaving the nodes in ``exclude`` as they are."""
    import onnx

    with _quiet():
        if method in ("int8-dynamic", "int8-static"):
            from optimum.onnxruntime import ORTQuantizer

            assert preset is not None
            quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize.") as scratch:
                # ORTQuantizer.quantize writes a folder (STACK.md trap 5): take the one file we want from it.
                folder = quantizer.quantize(int8_config(method, preset, exclude), scratch,
                                            calibration_tensors_range=ranges)
                written = list(Path(folder).glob("*.onnx"))
                if len(written) != 1:
                    raise CompressError(f"the quantizer wrote {len(written)} ONNX files for {source}")
                os.replace(written[0], target)
        elif method == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True,
                                             node_block_list=list(exclude) or None)
            onnx.save(model, str(target))
        elif method == "int4-weight":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=INT4_BLOCK_SIZE,
                                             is_symmetric=True, accuracy_level=4,
                                             nodes_to_exclude=list(exclude))
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
        else:  # pragma: no cover - resolve_method guards this
            raise CompressError(f"unknown method {method}")


# ---------------------------------------------------------------------------------------------
# The whole step


def _copy_sidecars(source_dir: Path, target_dir: Path) -> list[str]:
    copied = []
    if source_dir.resolve() == target_dir.resolve():
        return copied
    for name in SIDECAR_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, target_dir / name)
            copied.append(name)
    return copied + [name for name in copy_module_files(source_dir, target_dir) if name not in copied]


def _exclusion_schedule(count: int) -> list[int]:
    """How many of the most sensitive nodes each retry leaves out: 1, 2, 3, 4, 6, 8, 12, ... up to the cap."""
    cap = max(1, math.floor(count * MAX_EXCLUDED_FRACTION))
    steps, k = [], 1
    while k < cap:
        steps.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    steps.append(cap)
    return sorted(set(steps))


def compare_speed(model: Path, fp32: Path, profile: Profile, *, runs: int = DEFAULT_COMPARE_RUNS,
                  warmup: int = DEFAULT_COMPARE_WARMUP, progress: bool = False) -> SpeedComparison:
    """``model`` against ``fp32`` on this host, same process, runs interleaved."""
    from export.runtime.bench import compare_bench

    report = compare_bench(model, fp32, profile, runs=runs, warmup=warmup, progress=progress)
    speedup = report.p50_ratio
    verdict = "faster" if speedup > 1 + SPEED_NOISE else "slower" if speedup < 1 - SPEED_NOISE else "no faster"
    workload = report.model.workload
    shape = f"batch {workload.batch_size}" + (f" x {workload.sequence_length} tokens" if workload.sequence_length else "")
    return SpeedComparison(
        fp32_p50_ms=report.other.latency.p50_ms, quantized_p50_ms=report.model.latency.p50_ms, speedup=speedup,
        verdict=verdict, runs=runs, providers_used=list(report.model.session.providers_used),
        host=report.model.host.describe(), workload=f"{shape} ({workload.inputs_source})",
    )


def quantize_model(model: str | os.PathLike[str], profile: Profile, out: str | os.PathLike[str], *,
                   method: str | None = None, calibration_data: str | os.PathLike[str] | None = None,
                   compare: bool = True, eval_samples: int = DEFAULT_EVAL_SAMPLES,
                   calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, compare_runs: int = DEFAULT_COMPARE_RUNS,
                   accuracy_aware: bool = True, progress: bool = False,
                   log: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize the ONNX model ``model`` for ``profile`` into exactly the file ``out``.

    Tokenizer and config files beside the input are copied beside ``out``. ``method`` defaults
    to the profile's precision; ``bnb-int8``/``bnb-nf4`` take a Hugging Face folder and write a
    folder (see :func:`export.bnb.quantize_bnb`). ``calibration_data`` (int8-static only) is a
    .txt/.jsonl/.csv/.tsv file of texts. ``compare=False`` skips the speed comparison.
    Raises CompressError for bad input; nothing is left at ``out`` on failure.
    """
    source, target = Path(model), Path(out)
    chosen = resolve_method(profile, method)
    if chosen in BNB_METHODS:
        from export.bnb import quantize_bnb

        return quantize_bnb(source, target, chosen, profile=profile, compare=compare, eval_samples=eval_samples)
    say = log or (lambda message: None)
    if calibration_data is not None and chosen != "int8-static":
        raise CompressError(f"--calibration-data is used by int8-static only, not {chosen}")
    if target.suffix != ".onnx":
        raise CompressError(f"--out {target} must name an .onnx file")
    if target.exists() and target.resolve() == source.resolve():
        raise CompressError(f"--out {target} is the input model; choose another file name")
    fp32_model = check_fp32_model(source)
    preset = profile.quantization_preset if chosen.startswith("int8") else None
    budget = profile.budgets.quality.max_quantization_drop

    fp32_session = open_session(source)
    inputs = fp32_session.get_inputs()
    view = OutputView.of([o.name for o in fp32_session.get_outputs()])
    evaluation = model_samples(source, inputs, count=eval_samples)
    calibration: Samples | None = None
    if chosen == "int8-static":
        texts = read_texts(calibration_data)[:calibration_samples] if calibration_data else None
        if texts is not None and TextEncoder.from_folder(source.parent) is None:
            raise CompressError(f"--calibration-data needs the model's tokenizer.json next to {source}")
        calibration = model_samples(
            source, inputs, texts=texts if texts is not None else training_texts(calibration_samples),
            source=str(calibration_data) if calibration_data else "default corpus, training split",
            count=calibration_samples,
        )
    reference = view.rows(run_outputs(fp32_session, evaluation.feeds, view.output), evaluation.feeds)
    del fp32_session

    make_folder(target.parent)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        work = Path(scratch)
        ranges = None
        if calibration is not None:
            say(f"calibrating on {len(calibration.feeds)} {calibration.kind} samples")
            ranges = calibrate(source, calibration.feeds, int8_config(chosen, preset or "avx2", []), work)

        def attempt(exclude: Sequence[str]) -> tuple[Path, float, float, float]:
            candidate_path = work / f"attempt-{len(exclude)}.onnx"
            quantize_file(source, candidate_path, chosen, preset, exclude, ranges)
            session = open_session(candidate_path)
            rows = view.rows(run_outputs(session, evaluation.feeds, view.output), evaluation.feeds)
            agreement = view.agreement(reference, rows)
            return candidate_path, agreement, 1.0 - agreement, max_abs_diff(reference, rows)

        say(f"quantizing {source.name} ({chosen}{', ' + preset if preset else ''})")
        best_path, agreement, drop, diff = attempt([])
        attempts = [Attempt(0, drop)]
        excluded: list[ExcludedNode] = []
        if drop > budget and accuracy_aware:
            candidates = candidate_nodes(fp32_model, chosen)
            say(f"quality drop {drop:.4f} exceeds the budget {budget:.4f}: ranking {len(candidates)} nodes")
            ranked = rank_sensitivity(fp32_model, candidates, evaluation.feeds[:SENSITIVITY_SAMPLES],
                                      scheme_for(chosen, preset), _ranges_dict(ranges))
            for count in _exclusion_schedule(len(ranked)) if ranked else []:
                names = [c.name for c, _ in ranked[:count]]
                path, a, d, m = attempt(names)
                attempts.append(Attempt(count, d))
                say(f"  excluding {count} node(s): drop {d:.4f}")
                if d < drop:
                    best_path, agreement, drop, diff = path, a, d, m
                    excluded = [ExcludedNode(c.name, c.op_type, s) for c, s in ranked[:count]]
                if d <= budget:
                    break
            if drop > budget:
                notes.append(f"the quality drop stays above the budget ({drop:.4f} > {budget:.4f}): no node to "
                             "leave unquantized" if not ranked else
                             f"the quality drop stays above the budget ({drop:.4f} > {budget:.4f}) even with "
                             f"{attempts[-1].excluded} of {len(ranked)} nodes left unquantized; the best "
                             "attempt was kept")
        # Exactly the requested file appears, in one rename, only once it is complete.
        os.replace(best_path, target)
    sidecars = _copy_sidecars(source.parent, target.parent)
    if evaluation.kind == "synthetic":
        notes.append("no tokenizer.json beside the model: quality measured on synthetic inputs built from its "
                     "signature, not on real text")
    if sidecars:
        notes.append(f"copied beside the output: {', '.join(sidecars)}")

    result = QuantizeResult(
        method=chosen, preset=preset, profile=profile.name, input_path=source, out_path=target,
        size_before_bytes=source.stat().st_size, size_after_bytes=target.stat().st_size, metric=view.metric,
        output=view.output, agreement=agreement, quality_drop=drop, max_quantization_drop=budget,
        within_budget=drop <= budget, max_abs_diff=diff, samples=len(evaluation.feeds),
        sample_kind=evaluation.kind, sample_source=evaluation.source, excluded_nodes=excluded, attempts=attempts,
        calibration_samples=len(calibration.feeds) if calibration else 0,
        calibration_source=calibration.source if calibration else None, notes=notes,
    )
    if compare:
        say(f"timing {target.name} against {source.name} on this host")
        result.speed = compare_speed(target, source, profile, runs=compare_runs, progress=progress)
        result.host = result.speed.host
        if result.speed.verdict != "faster":
            result.notes.append(f"not faster on this host ({result.speed.host}): {result.speed.speedup:.2f}x; "
                                f"{_target_hint(chosen, profile)}")
    else:
        from export.runtime.host import detect_host

        result.host = detect_host().describe()
    return result


def _target_hint(method: str, profile: Profile) -> str:
    if method == "fp16":
        return "fp16 is meant for GPUs; measure on the target with `compress bench`"
    if profile.quantization_preset == "tensorrt":
        return "QDQ int8 is meant for TensorRT; measure on the target with `compress bench`"
    return "measure on the target with `compress bench` before relying on it"


def output_name(method: str) -> str:
    """The file name a quantize stage writes: ``model.int8-dynamic.onnx``, ``model.fp16.onnx``..."""
    return f"model.{method}.onnx" if method in ONNX_METHODS else f"model-{method}"


def quantize_stage(model: str | os.PathLike[str], profile: Profile, stage_dir: str | os.PathLike[str], *,
                   method: str | None = None, calibration_data: str | os.PathLike[str] | None = None,
                   compare: bool = True, resume: bool = True, progress: bool = False,
                   log: Callable[[str], None] | None = None) -> QuantizeResult:
    """The quantize stage of a run: ``stage_dir/model.<method>.onnx`` (+ tokenizer files) and ``stage.json``.

    With ``resume`` a stage whose input, profile and parameters are unchanged is not run again.
    """
    source, stage_dir = Path(model), Path(stage_dir)
    chosen = resolve_method(profile, method)
    inputs = {"model": FileRef.of(source)}
    if calibration_data:
        inputs["calibration"] = FileRef.of(calibration_data)
    planned = StageRecord(stage="quantize", inputs=inputs, params={
        "method": chosen, "profile": profile.name, "preset": profile.quantization_preset,
        "max_quantization_drop": profile.budgets.quality.max_quantization_drop, "compare": compare,
    })
    name = output_name(chosen)

    def work(tmp: Path) -> StageOutput:
        result = quantize_model(source, profile, tmp / name, method=chosen, calibration_data=calibration_data,
                                compare=compare, progress=progress, log=log)
        result.out_path = stage_dir / name
        return StageOutput({"model": name}, {"result": result.to_json()})

    return QuantizeResult.from_json(run_stage(stage_dir, planned, work, resume=resume).result)


def read_quantize(stage_dir: str | os.PathLike[str]) -> QuantizeResult:
    """The result recorded in a quantize stage folder."""
    return QuantizeResult.from_json(read_stage_result(stage_dir, "quantize"))
