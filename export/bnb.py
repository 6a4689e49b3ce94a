"""bitsandbytes int8 / nf4 quantization of a Hugging Face folder, for PyTorch deployment on a GPU.

The folder is loaded through transformers' ``BitsAndBytesConfig`` (int8 ``LLM.int8()`` or 4-bit
NormalFloat), measured against the fp32 model on held-out real text, and written with
``save_pretrained`` (safetensors) plus the tokenizer and sentence-transformers files, so
``from_pretrained`` loads it again. Such a folder holds packed weights that only bitsandbytes
kernels run: it cannot be exported to ONNX (``compress export`` refuses it).

bitsandbytes also runs on a CPU, so quantizing and the quality check work here; its kernels are
made for CUDA, and the speed measured on a CPU host is reported as such.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.base.errors import CompressError
from export.base.files import atomic_directory
from export.base.quiet import quiet_libraries
from export.base.tasks import detect_task, read_config, read_pooling
from export.runtime.agreement import argmax_agreement, max_abs_diff, mean_cosine
from export.runtime.profiles import Profile, QualityBudget
from export.quantize_report import QuantizeResult, SpeedComparison
from export.runtime.samples import DEFAULT_EVAL_SAMPLES, held_out_texts

BNB_QUANT = {"bnb-int8": "8bit", "bnb-nf4": "4bit"}
# sentence-transformers files and folders that travel with the weights.
_ST_ITEMS = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
             "2_Dense", "2_Normalize", "3_Normalize")
SPEED_ROUNDS = 10


def _quiet():
    # bitsandbytes warns on every CPU matmul that it casts inputs; transformers warns about dtypes.
    return quiet_libraries("transformers", "bitsandbytes", "accelerate", stdout=False)


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def _outputs(model: Any, batches: list[dict[str, Any]], task: str, pooling: Any, projection: Any) -> np.ndarray:
    import torch

    from export.torch_model import task_outputs

    rows = []
    with torch.inference_mode(), _quiet():
        for batch in batches:
            out = task_outputs(model, batch, task, pooling, projection).final.float().numpy()
            if out.ndim == 3:  # token logits: real tokens only
                out = out[batch["attention_mask"].numpy().astype(bool)]
            rows.append(out)
    return np.concatenate(rows, axis=0)


def _time_interleaved(models: list[Any], batch: dict[str, Any], rounds: int) -> list[float]:
    """Median seconds per forward of each model, runs alternating between them."""
    import torch

    from export.torch_model import model_inputs

    samples: list[list[float]] = [[] for _ in models]
    with torch.inference_mode(), _quiet():
        for model in models:
            model(**model_inputs(batch))  # warm-up
        for _ in range(rounds):
            for index, model in enumerate(models):
                start = time.perf_counter()
                model(**model_inputs(batch))
                samples[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def quantize_bnb(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], method: str, *,
                 profile: Profile | None = None, compare: bool = True, eval_samples: int = DEFAULT_EVAL_SAMPLES,
                 log: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize the Hugging Face folder ``model_dir`` with bitsandbytes (``bnb-int8`` or ``bnb-nf4``) into ``out_dir``.

    Quality is measured against the fp32 model on held-out real text; ``compare`` also times both
    in PyTorch on this host (batch 1, 128 tokens, interleaved). The output folder appears only
    when complete.
    """
    from export.torch_model import read_dense
    from export.torch_model import load_model, load_tokenizer

    source, target = Path(model_dir), Path(out_dir)
    say = log or (lambda message: None)
    if method not in BNB_QUANT:
        raise CompressError(f"unknown bitsandbytes method {method!r}; choose {' or '.join(BNB_QUANT)}")
    if not source.is_dir():
        raise CompressError(f"{method} quantizes a Hugging Face model folder; {source} is not a folder")
    if target.suffix == ".onnx":
        raise CompressError(f"{method} writes a Hugging Face folder for PyTorch, not ONNX; "
                            f"--out {target} must name a folder")
    if target.resolve() == source.resolve():
        raise CompressError(f"--out {target} is the input folder; choose another one")
    if (read_config(source).get("quantization_config") or {}).get("quant_method"):
        raise CompressError(f"{source} is already quantized; quantize the fp32 folder it came from")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise CompressError(f"{method} needs bitsandbytes ({exc})") from None
    task = detect_task(source)
    budget = (profile.budgets.quality if profile else QualityBudget()).max_quantization_drop

    tokenizer = load_tokenizer(source)
    texts = held_out_texts(eval_samples)
    batches = [dict(tokenizer([text], truncation=True, max_length=128, return_tensors="pt")) for text in texts]
    pooling = read_pooling(source) if task == "feature-extraction" else None
    projection = read_dense(source) if task == "feature-extraction" else None

    say(f"loading {source.name} in fp32 and as {method}")
    fp32 = load_model(source, task)
    with _quiet():
        quantized = load_model(source, task, quant=BNB_QUANT[method])
    reference = _outputs(fp32, batches, task, pooling, projection)
    candidate = _outputs(quantized, batches, task, pooling, projection)
    if task == "feature-extraction":
        metric, output, agreement = "mean_cosine", "sentence_embedding", mean_cosine(reference, candidate)
    else:
        metric, output, agreement = "argmax_agreement", "logits", argmax_agreement(reference, candidate)

    with atomic_directory(target) as tmp, _quiet():
        quantized.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in _ST_ITEMS:
            item = source / name
            if item.is_dir():
                shutil.copytree(item, tmp / name)
            elif item.is_file():
                shutil.copyfile(item, tmp / name)

    drop = 1.0 - agreement
    notes = ["bitsandbytes weights run in PyTorch only; this folder cannot be exported to ONNX"]
    result = QuantizeResult(
        method=method, preset=None, profile=profile.name if profile else "", input_path=source, out_path=target,
        size_before_bytes=_weights_bytes(source), size_after_bytes=_weights_bytes(target), metric=metric,
        output=output, agreement=agreement, quality_drop=drop, max_quantization_drop=budget,
        within_budget=drop <= budget, max_abs_diff=max_abs_diff(reference, candidate), samples=len(texts),
        sample_kind="text", sample_source="default corpus, held-out split", notes=notes,
    )
    from export.runtime.host import detect_host

    result.host = detect_host().describe()
    if compare:
        say("timing fp32 and bitsandbytes forwards on this host (PyTorch, interleaved)")
        long_batch = dict(tokenizer([" ".join(texts)], truncation=True, max_length=128, return_tensors="pt"))
        fp32_s, quant_s = _time_interleaved([fp32, quantized], long_batch, SPEED_ROUNDS)
        speedup = fp32_s / quant_s
        verdict = "faster" if speedup > 1.05 else "slower" if speedup < 0.95 else "no faster"
        result.speed = SpeedComparison(
            fp32_p50_ms=fp32_s * 1e3, quantized_p50_ms=quant_s * 1e3, speedup=speedup, verdict=verdict,
            runs=SPEED_ROUNDS, providers_used=["torch-cpu"], host=result.host,
            workload=f"batch 1 x {long_batch['input_ids'].shape[1]} tokens (held-out text), PyTorch",
        )
        if verdict != "faster":
            notes.append(f"not faster on this host ({result.host}): {speedup:.2f}x; bitsandbytes kernels are "
                         "made for CUDA GPUs")
    return result
