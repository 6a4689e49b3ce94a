"""ONNX export: every task, parity on real text, sentence embeddings in the graph, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.base.errors import CompressError
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def exported_encoder(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory):
    from export.onnx_export import export_model

    return export_model(tiny_encoder, tmp_path_factory.mktemp("export") / "encoder")


def test_encoder_export_has_sentence_embedding_with_parity(exported_encoder, tiny_encoder, sentences):
    import onnxruntime as ort
    import torch

    from export.base.tasks import read_pooling
    from export.torch_model import pool
    from export.runtime.samples import TextEncoder

    result = exported_encoder
    assert result.task == "feature-extraction" and result.library == "sentence_transformers"
    assert [o.name for o in result.outputs] == ["token_embeddings", "sentence_embedding", "last_hidden_state"]
    assert result.parity.output == "sentence_embedding" and result.parity.metric == "mean_cosine"
    assert result.parity.passed and result.parity.tokenizer_matches
    assert result.parity.agreement >= 0.9999 and result.parity.max_abs_diff <= 1e-3
    assert result.parity.samples == 48
    out = result.onnx_path.parent
    for name in ("model.onnx", "tokenizer.json", "config.json", "stage.json"):
        assert (out / name).is_file(), name
    # Dynamic batch and sequence axes.
    assert all(isinstance(d, str) for d in result.inputs[0].shape)

    # The graph's output is the pooled, normalised embedding PyTorch computes, for a padded batch.
    encoder = TextEncoder(out / "tokenizer.json")
    batch = encoder.encode(sentences[:5])
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (embedding,) = session.run(["sentence_embedding"], {k: batch[k] for k in ("input_ids", "attention_mask")})
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_encoder).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(batch["input_ids"]),
                       attention_mask=torch.from_numpy(batch["attention_mask"])).last_hidden_state
        expected = pool(hidden, torch.from_numpy(batch["attention_mask"]), read_pooling(tiny_encoder)).numpy()
    assert embedding.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedding, expected, atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_classifier", "tiny_token_classifier"])
def test_classifier_exports_logits_with_argmax_parity(fixture, request, tmp_path):
    from export.onnx_export import export_model

    folder = request.getfixturevalue(fixture)
    result = export_model(folder, tmp_path / "out")
    assert [o.name for o in result.outputs] == ["logits"]
    assert result.parity.metric == "argmax_agreement" and result.parity.agreement >= 0.99
    assert result.parity.max_abs_diff <= 1e-3
    assert {i.name for i in result.inputs} >= {"input_ids", "attention_mask"}
    expected_rank = 3 if fixture == "tiny_token_classifier" else 2
    assert len(result.outputs[0].shape) == expected_rank


def test_parity_outside_tolerance_fails_and_writes_nothing(tiny_classifier, tmp_path):
    from export.onnx_export import ParityTolerance, export_model

    out = tmp_path / "strict"
    with pytest.raises(CompressError, match="does not match PyTorch"):
        # No fp32 export differs from PyTorch by exactly zero on every logit: this tolerance must fail.
        export_model(tiny_classifier, out, tolerance=ParityTolerance(max_abs_diff=0.0))
    assert not out.exists()
    assert not any(tmp_path.iterdir())  # no temporary folder left behind either


def test_resume_returns_recorded_result(exported_encoder, tiny_encoder):
    from export.onnx_export import export_model, read_export

    out = exported_encoder.onnx_path.parent
    before = (out / "model.onnx").stat().st_mtime_ns
    again = export_model(tiny_encoder, out, resume=True)
    assert (out / "model.onnx").stat().st_mtime_ns == before
    assert again.parity.agreement == exported_encoder.parity.agreement
    assert read_export(out).opset == exported_encoder.opset


def test_samples_file_is_used_for_parity(tiny_classifier, tmp_path, sentences):
    from export.onnx_export import export_model

    samples = tmp_path / "texts.txt"
    samples.write_text("\n".join(sentences[:10]) + "\n")
    result = export_model(tiny_classifier, tmp_path / "out", samples=samples)
    assert result.parity.samples == 10 and result.parity.sample_source == str(samples)


def _unsupported_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "architectures": ["NoSuchModel"]}))
    return folder


def test_unsupported_architecture_exits_2(tmp_path):
    folder = _unsupported_folder(tmp_path / "weird")
    result = run_cli(["export", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not supported by the ONNX exporter" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_folder_is_refused(tiny_encoder, tmp_path):
    import shutil

    folder = tmp_path / "bnb"
    shutil.copytree(tiny_encoder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    result = run_cli(["export", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "bitsandbytes" in result.stderr and "cannot be exported to ONNX" in result.stderr


def test_cli_export_json(tiny_token_classifier, tmp_path):
    result = run_cli(["export", str(tiny_token_classifier), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "token-classification"
    assert report["parity"]["passed"] is True and report["schema_version"] == 1
    assert Path(report["onnx_path"]).is_file()


def test_cli_export_bad_inputs(tmp_path, tiny_encoder):
    missing = run_cli(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "not found" in missing.stderr
    same = run_cli(["export", str(tiny_encoder), "--out", str(tiny_encoder)])
    assert same.exit_code == 2 and "replace the model folder" in same.stderr
    wrong_task = run_cli(["export", str(tiny_encoder), "--out", str(tmp_path / "o"), "--task", "nope"])
    assert wrong_task.exit_code == 2


@pytest.mark.slow
def test_real_teacher_export(teacher_dir, tmp_path):
    from export.onnx_export import export_model

    result = export_model(teacher_dir, tmp_path / "teacher")
    assert result.parity.output == "sentence_embedding"
    assert result.parity.agreement >= 0.9999 and result.parity.max_abs_diff <= 1e-4
    assert result.outputs[-1].shape[-1] == 384


def test_student_with_dense_projection_exports_projected_embedding(tiny_encoder, tmp_path):
    """A narrower distilled student carries a Dense projection; it must be inside the graph."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from export.onnx_export import export_model

    folder = tmp_path / "student"
    shutil.copytree(tiny_encoder, folder)
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 16, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    torch.manual_seed(1)
    linear = torch.nn.Linear(32, 16)
    save_file({f"linear.{k}": v.contiguous() for k, v in linear.state_dict().items()},
              str(folder / "2_Dense" / "model.safetensors"))
    modules = json.loads((folder / "modules.json").read_text())
    modules = [modules[0], modules[1],
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    result = export_model(folder, tmp_path / "out")
    outputs = {o.name: o for o in result.outputs}
    assert outputs["sentence_embedding"].shape[-1] == 16 and outputs["last_hidden_state"].shape[-1] == 32
    assert result.parity.passed and result.parity.agreement >= 0.9999


def test_text_encoder_pads_to_the_longest_text_not_the_saved_length(exported_encoder, sentences):
    from export.runtime.samples import TextEncoder, text_feeds

    encoder = TextEncoder(exported_encoder.onnx_path.parent / "tokenizer.json")
    batch = encoder.encode(["Short text.", sentences[0]])
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(axis=1).max() < 128
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    feeds = text_feeds(encoder, sentences[:3], exported_encoder.inputs)
    assert len(feeds) == 3 and all(f["input_ids"].shape[0] == 1 for f in feeds)
    assert all(set(f) == {"input_ids", "attention_mask"} for f in feeds)  # the graph's own inputs only
