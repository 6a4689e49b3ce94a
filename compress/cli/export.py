"""`compress export MODEL_DIR --out DIR`: ONNX export with a parity check on real text (encoders, classifiers,
causal LMs with their KV cache), or GGUF for llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import click

from export.base.errors import CompressError
from export.base.tasks import ALL_TASKS, TEXT_GENERATION, is_causal_lm
from export.gguf_export import GGUF_TYPES


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder to write model.onnx, the tokenizer, config and stage.json into (replaced atomically).")
@click.option("--task", type=click.Choice(("auto",) + ALL_TASKS), default="auto", show_default=True,
              help="What the model does; auto reads it from the config's architecture.")
@click.option("--opset", type=click.IntRange(11, 21), default=None, help="ONNX opset (default: the exporter's).")
@click.option("--samples", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Texts for the parity check (.txt one per line, .jsonl/.csv/.tsv with a text field); "
                   "default: held-out sentences of the default corpus.")
@click.option("--format", "file_format", type=click.Choice(("onnx", "gguf")), default="onnx", show_default=True,
              help="gguf: a Llama-family language model as one GGUF file for llama.cpp (OUT/model-TYPE.gguf).")
@click.option("--gguf-type", type=click.Choice(GGUF_TYPES), default="f16", show_default=True,
              help="With --format gguf: the weights' type (q8_0 and q4_0 are llama.cpp's block quantizations).")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def export(model_dir: Path, out_dir: Path, task: str, opset: int | None, samples: Path | None, file_format: str,
           gguf_type: str, as_json: bool) -> None:
    """Export a Hugging Face model folder to ONNX and check parity with PyTorch.

    Sentence encoders (sentence-transformers folders) get pooling and normalisation inside the
    graph: the output `sentence_embedding` is the embedding to use. Classifiers output `logits`.
    A causal LM (text-generation) gets its KV cache as inputs and outputs (ONNX Runtime's fused
    decoder ops where the architecture allows), its tokenizer, chat template and generation config,
    checked on logits and on greedy tokens through the cache. The export fails, writing nothing,
    when the ONNX model does not match PyTorch on real text.

    \b
    For llama.cpp: compress export ./student --format gguf --gguf-type q8_0 --out gguf/
    then: llama-cli -m gguf/model-q8_0.gguf -p "Hello" -n 32
    """
    from export.onnx_export import export_model

    if not model_dir.is_dir():
        raise CompressError(f"model folder not found: {model_dir}")
    if file_format == "gguf":
        _export_gguf(model_dir, out_dir, gguf_type, as_json)
        return
    if task == TEXT_GENERATION or (task == "auto" and is_causal_lm(model_dir)):
        _export_lm(model_dir, out_dir, opset, samples, as_json)
        return
    click.echo(f"exporting {model_dir} ...", err=True)
    result = export_model(model_dir, out_dir, task=task, opset=opset, samples=samples)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    parity = result.parity
    click.echo(f"wrote {result.onnx_path} ({result.size_bytes / 2**20:.1f} MiB, {result.task}, opset {result.opset})")
    click.echo(f"inputs: {', '.join(s.name for s in result.inputs)}; outputs: {', '.join(s.name for s in result.outputs)}")
    click.echo(f"parity on {parity.samples} texts ({parity.sample_source}): {parity.metric} {parity.agreement:.6f}, "
               f"max abs diff {parity.max_abs_diff:.2e} on {parity.output}")


def _export_lm(model_dir: Path, out_dir: Path, opset: int | None, samples: Path | None, as_json: bool) -> None:
    from export.lm_export import PARITY_TEXTS, export_causal_lm
    from export.runtime.samples import held_out_texts

    click.echo(f"exporting {model_dir} (a causal LM, with its KV cache) ...", err=True)
    texts = held_out_texts(PARITY_TEXTS, samples) if samples is not None else None
    result = export_causal_lm(model_dir, out_dir, parity_texts=texts, opset=opset)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    parity = result.parity
    click.echo(f"wrote {result.out_path} ({result.size_mb:.1f} MiB, {result.task}, {result.layout} layout, "
               f"opset {result.opset})")
    click.echo(f"parity on {parity.texts} texts: top-1 agreement {parity.top1_agreement:.4f}, max abs logit diff "
               f"{parity.max_abs_logit_diff:.2e}; first {parity.greedy_tokens} greedy tokens through the KV cache "
               f"{'identical' if parity.greedy_match else 'DIFFER'}")


def _export_gguf(model_dir: Path, out_dir: Path, gguf_type: str, as_json: bool) -> None:
    from dataclasses import asdict

    from export.gguf_export import export_gguf

    result = export_gguf(model_dir, out_dir / f"model-{gguf_type}.gguf", gguf_type=gguf_type)
    if as_json:
        click.echo(json.dumps({**asdict(result), "path": str(result.path)}, indent=2))
        return
    click.echo(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.tensors} tensors, "
               f"{result.vocab_size} tokens, {gguf_type})")
    click.echo(f'run it: llama-cli -m {result.path} -p "Hello" -n 32')
