"""ONNX quantization (int8 dynamic/static, fp16, int4) and bitsandbytes: loadable results, quality numbers, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.base.errors import CompressError
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def encoder_onnx(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.onnx_export import export_model

    return export_model(tiny_encoder, tmp_path_factory.mktemp("fp32") / "encoder").onnx_path


@pytest.fixture(scope="module")
def host():
    from export.runtime.profiles import load_profile

    return load_profile("host")


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _run(path: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    from export.runtime.samples import TextEncoder

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = TextEncoder(path.parent / "tokenizer.json").encode(texts)
    return session.run(["sentence_embedding"], {i.name: batch[i.name] for i in session.get_inputs()})[0]


@pytest.mark.parametrize("method, marker_op", [("int8-dynamic", "MatMulInteger"), ("int8-static", "QLinearMatMul"),
                                               ("fp16", "Cast"), ("int4-weight", "MatMulNBits")])
def test_each_method_writes_a_loadable_model_with_a_quality_number(method, marker_op, encoder_onnx, host, tmp_path,
                                                                   sentences):
    from export.quantize import quantize_model

    out = tmp_path / "q" / f"model.{method}.onnx"
    result = quantize_model(encoder_onnx, host, out, method=method, compare=False)
    assert out.is_file() and result.out_path == out
    assert sorted(p.name for p in out.parent.iterdir() if p.suffix == ".onnx") == [out.name]  # exactly --out
    assert (out.parent / "tokenizer.json").is_file()  # copied beside it
    assert marker_op in _ops(out)
    assert result.metric == "mean_cosine" and result.output == "sentence_embedding"
    assert result.sample_kind == "text" and result.samples == 64
    assert 0.9 < result.agreement <= 1.0 + 1e-9
    assert result.quality_drop == pytest.approx(1 - result.agreement)
    assert result.max_quantization_drop == host.budgets.quality.max_quantization_drop
    assert result.within_budget == (result.quality_drop <= result.max_quantization_drop)
    assert result.size_after_bytes < result.size_before_bytes
    if method == "int8-static":
        assert result.calibration_samples > 0 and "training split" in result.calibration_source
    embeddings = _run(out, sentences[:3])
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32  # fp32 I/O kept for fp16 too


def test_speed_comparison_runs_in_the_same_call(encoder_onnx, host, tmp_path):
    from export.quantize import quantize_model

    result = quantize_model(encoder_onnx, host, tmp_path / "m.onnx", method="int8-dynamic", compare_runs=3)
    speed = result.speed
    assert speed is not None and speed.runs == 3
    assert speed.fp32_p50_ms > 0 and speed.quantized_p50_ms > 0
    assert speed.speedup == pytest.approx(speed.fp32_p50_ms / speed.quantized_p50_ms, rel=1e-6)
    assert speed.verdict in {"faster", "no faster", "slower"}
    assert speed.providers_used == ["CPUExecutionProvider"] and speed.host
    if speed.verdict != "faster":
        assert any("not faster on this host" in note for note in result.notes)


def test_accuracy_aware_exclusion_brings_drop_within_budget(encoder_onnx, host, tmp_path):
    from export.runtime.profiles import Profile
    from export.quantize import quantize_model

    first = quantize_model(encoder_onnx, host, tmp_path / "a.onnx", method="int8-static", compare=False)
    assert first.excluded_nodes == [] and first.quality_drop > 0
    # A budget just under what plain quantization costs forces the search to leave nodes in fp32.
    data = host.model_dump()
    data["budgets"]["quality"]["max_quantization_drop"] = first.quality_drop * 0.5
    strict = Profile.model_validate(data)
    result = quantize_model(encoder_onnx, strict, tmp_path / "b.onnx", method="int8-static", compare=False)
    assert result.excluded_nodes, result.attempts
    assert len(result.attempts) >= 2 and result.attempts[0].excluded == 0
    assert result.quality_drop <= first.quality_drop
    excluded = {n.name for n in result.excluded_nodes}
    import onnx

    names = {node.name for node in onnx.load(str(tmp_path / "b.onnx")).graph.node}
    assert excluded <= names  # excluded nodes stay as the original fp32 ops
    assert all(n.sensitivity >= 0 for n in result.excluded_nodes)
    if not result.within_budget:
        assert any("stays above the budget" in note for note in result.notes)


def test_already_quantized_input_exits_2(encoder_onnx, host, tmp_path):
    from export.quantize import quantize_model

    quantized = tmp_path / "int8.onnx"
    quantize_model(encoder_onnx, host, quantized, method="int8-dynamic", compare=False)
    with pytest.raises(CompressError, match="already quantized"):
        quantize_model(quantized, host, tmp_path / "twice.onnx", method="int8-dynamic", compare=False)
    result = run_cli(["quantize", str(quantized), "--out", str(tmp_path / "again.onnx"), "--no-compare"])
    assert result.exit_code == 2 and "already quantized" in result.stderr
    assert not (tmp_path / "again.onnx").exists()


def test_empty_calibration_file_exits_2_and_writes_nothing(encoder_onnx, tmp_path):
    empty = tmp_path / "calibration.txt"
    empty.write_text("\n\n   \n")
    out = tmp_path / "out" / "model.onnx"
    result = run_cli(["quantize", str(encoder_onnx), "--method", "int8-static", "--calibration-data", str(empty),
                      "--out", str(out), "--no-compare"])
    assert result.exit_code == 2, result.output
    assert "no usable" in result.stderr
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_calibration_file_is_used(encoder_onnx, host, tmp_path, sentences):
    from export.quantize import quantize_model

    texts = tmp_path / "cal.jsonl"
    texts.write_text("\n".join(json.dumps({"text": s}) for s in sentences[:12]) + "\n")
    result = quantize_model(encoder_onnx, host, tmp_path / "s.onnx", method="int8-static", calibration_data=texts,
                            compare=False)
    assert result.calibration_samples == 12 and result.calibration_source == str(texts)


def test_graph_without_tokenizer_uses_synthetic_samples(tiny_onnx, host, tmp_path):
    from export.quantize import quantize_model

    result = quantize_model(tiny_onnx, host, tmp_path / "tiny.int8.onnx", method="int8-dynamic", compare=False)
    assert result.sample_kind == "synthetic" and result.output == "y"
    assert any("synthetic" in note for note in result.notes)
    assert 0.0 <= result.quality_drop < 0.5


def test_bad_inputs(encoder_onnx, host, tmp_path):
    from export.quantize import quantize_model

    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(CompressError, match="not a readable ONNX model"):
        quantize_model(not_onnx, host, tmp_path / "y.onnx", method="int8-dynamic")
    with pytest.raises(CompressError, match="must name an .onnx file"):
        quantize_model(encoder_onnx, host, tmp_path / "y.bin", method="int8-dynamic")
    with pytest.raises(CompressError, match="int8-static only"):
        quantize_model(encoder_onnx, host, tmp_path / "y.onnx", method="fp16", calibration_data=not_onnx)
    from export.runtime.profiles import load_profile

    with pytest.raises(CompressError, match="runs on CPUs only"):
        quantize_model(encoder_onnx, load_profile("jetson"), tmp_path / "y.onnx", method="int8-dynamic")
    result = run_cli(["quantize", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "z.onnx")])
    assert result.exit_code == 2 and "not found" in result.stderr


def test_profile_precision_is_the_default_method(encoder_onnx, tmp_path):
    result = run_cli(["quantize", str(encoder_onnx), "--profile", "jetson", "--out", str(tmp_path / "m.onnx"),
                      "--no-compare", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "fp16" and report["profile"] == "jetson-orin-nano"
    assert report["schema_version"] == 1 and report["speed"] is None


def test_quantize_stage_writes_record_and_resumes(encoder_onnx, host, tmp_path):
    from export.quantize import quantize_stage, read_quantize

    stage = tmp_path / "run" / "quantize"
    result = quantize_stage(encoder_onnx, host, stage, compare=False)
    assert result.out_path == stage / "model.int8-dynamic.onnx" and result.out_path.is_file()
    assert (stage / "stage.json").is_file() and (stage / "tokenizer.json").is_file()
    mtime = result.out_path.stat().st_mtime_ns
    again = quantize_stage(encoder_onnx, host, stage, compare=False)
    assert again.out_path.stat().st_mtime_ns == mtime and again.agreement == result.agreement
    assert read_quantize(stage).method == "int8-dynamic"


def _bitsandbytes_works_on_cpu() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
        import torch

        layer = bitsandbytes.nn.Linear8bitLt(8, 8, has_fp16_weights=False)
        layer = layer.to("cpu")
        layer(torch.zeros(1, 8))
    except Exception as exc:  # any failure means: not usable here
        return f"bitsandbytes does not run on this CPU: {type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4"])
def test_bitsandbytes_folder(method, tiny_encoder, host, tmp_path):
    reason = _bitsandbytes_works_on_cpu()
    if reason:
        pytest.skip(reason)
    from export.quantize import quantize_model

    out = tmp_path / method
    result = quantize_model(tiny_encoder, host, out, method=method, compare=False)
    assert result.metric == "mean_cosine" and 0.99 < result.agreement <= 1.0 + 1e-9
    assert result.size_after_bytes < result.size_before_bytes
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert (out / "model.safetensors").is_file() and (out / "modules.json").is_file()
    # ...and such a folder is refused by the ONNX exporter.
    exported = run_cli(["export", str(out), "--out", str(tmp_path / "onnx")])
    assert exported.exit_code == 2 and "cannot be exported to ONNX" in exported.stderr


def test_bitsandbytes_refuses_an_onnx_out(tiny_encoder, host, tmp_path):
    from export.quantize import quantize_model

    with pytest.raises(CompressError, match="must name a folder"):
        quantize_model(tiny_encoder, host, tmp_path / "x.onnx", method="bnb-int8")


def test_cli_quantize_human_output(encoder_onnx, tmp_path):
    result = run_cli(["quantize", str(encoder_onnx), "--method", "int8-dynamic", "--out", str(tmp_path / "q.onnx"),
                      "--no-compare"])
    assert result.exit_code == 0, result.stderr
    assert "quality vs fp32 on 64 text samples" in result.stdout
    assert (tmp_path / "q.onnx").is_file()


def test_tensorrt_targets_get_symmetric_qdq(encoder_onnx, tmp_path):
    from export.runtime.profiles import load_profile
    from export.quantize import quantize_model

    out = tmp_path / "trt.onnx"
    result = quantize_model(encoder_onnx, load_profile("jetson"), out, method="int8-static", compare=False)
    assert result.preset == "tensorrt"
    ops = _ops(out)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not any(op.startswith("QLinear") for op in ops)
    import onnx
    from onnx import TensorProto

    zero_points = [init for init in onnx.load(str(out)).graph.initializer if init.name.endswith("zero_point")]
    # s8 activations and weights (int32 zero points belong to quantized biases); no uint8 anywhere.
    assert zero_points and all(z.data_type in (TensorProto.INT8, TensorProto.INT32) for z in zero_points)
    assert any(z.data_type == TensorProto.INT8 for z in zero_points)
