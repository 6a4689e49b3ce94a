"""Throughput of the distillation loop against a plain loop, and its model-FLOPs utilisation.

Both loops distil the same teacher into the same 3-layer student, on the same training texts
(a subset of the default corpus's training split), for the same number of steps and batch size:

* ours: ``compress.encoder.distill`` (length-bucketed batches, teacher outputs cached in fp16
  after the first epoch, fused AdamW; bf16 autocast and pinned memory on CUDA);
* plain: tokenise each random batch, run the teacher every step, fp32, default AdamW.

Model FLOPs per training sample: 6 x student parameters x real tokens (forward and backward),
plus 2 x teacher parameters x real tokens when the teacher runs. Parameters exclude the
embedding tables (lookups, not matmuls); real tokens exclude padding; attention scores are left
out (small at these lengths). MFU = model FLOPs / (time x peak). The peak is the datasheet
dense bf16 figure on a known GPU, or on the CPU the measured fp32 matmul throughput of this
machine (labelled as such; a datasheet CPU peak is higher).

    python benchmarks/distill_loop.py               # CPU here: ~2-3 minutes
    python benchmarks/distill_loop.py --epochs 6    # on a GPU machine, bigger
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Dense bf16 tensor-core peaks from NVIDIA datasheets (TFLOP/s, no sparsity).
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                        "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
RESULTS = Path(__file__).resolve().parent / "results"


def measured_cpu_peak_gflops(threads: int, size: int = 1536, repeats: int = 8) -> float:
    """fp32 matmul throughput of this CPU with ``threads`` torch threads (best of ``repeats``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_peak_tflops(name: str) -> float | None:
    for key, value in GPU_BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    return None


def matmul_parameters(model) -> int:
    """Parameters that take part in matmuls (everything but embedding tables)."""
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def plain_loop(teacher_dir: Path, texts: list[str], steps: int, batch_size: int, lr: float, device: str,
               seed: int) -> dict:
    """The loop a first draft would write: random batches, teacher every step, fp32."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from compress.encoder.student import build_student, parse_student_spec, plan_student
    from compress.encoder.teacher import load_teacher

    teacher = load_teacher(teacher_dir, device=device)
    student = build_student(teacher.model, plan_student(parse_student_spec("layers=3"), teacher.model.config))
    model = student.model.to(device).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)

    def embed(m, batch):
        states = m(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)

    real_tokens = padded_tokens = 0
    start = time.perf_counter()
    for _ in range(steps):
        chosen = [texts[i] for i in rng.choice(len(texts), size=batch_size, replace=False)]
        batch = teacher.tokenizer(chosen, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
        real_tokens += int(batch["attention_mask"].sum())
        padded_tokens += batch["attention_mask"].numel()
        with torch.no_grad():
            target = embed(teacher.model, batch)
        loss = (1 - F.cosine_similarity(embed(model, batch), target)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": steps * batch_size, "real_tokens": real_tokens,
            "padded_tokens": padded_tokens, "teacher_tokens": real_tokens,
            "student_matmul_params": matmul_parameters(model), "teacher_matmul_params": matmul_parameters(teacher.model)}


def our_loop(data_file: Path, steps: int, batch_size: int, lr: float, device: str, seed: int, threads: int | None,
             work: Path) -> dict:
    from compress.encoder import DistillConfig, Reporter, distill
    from compress.encoder.batching import encode
    from compress.training.batching import epoch_batches
    from export.base.corpus import load_corpus, split_corpus
    from compress.encoder.teacher import load_teacher

    config = DistillConfig(data=data_file, student="layers=3", max_steps=steps, batch_size=batch_size, lr=lr,
                           seed=seed, eval_points=0, device=device, threads=threads)
    result = distill(config, work / "ours", reporter=Reporter(show_progress=False))
    # Every example is seen once per epoch (steps is a whole number of epochs), and the teacher
    # runs once per example: count their real tokens exactly.
    teacher = load_teacher(None)
    split = split_corpus(load_corpus(data_file).examples, config.split_seed)
    lengths = encode(split.train, [None] * len(split.train), teacher.tokenizer, "feature-extraction", 128).lengths
    epochs = result.training.epochs
    padded = sum(len(b) * int(lengths[b].max()) for epoch in range(round(epochs))
                 for b in epoch_batches(lengths, batch_size, seed, epoch))
    return {"seconds": result.training.train_time_s, "samples": result.training.samples_seen,
            "samples_per_s_reported": result.training.samples_per_s,
            "real_tokens": int(round(lengths.sum() * epochs)), "padded_tokens": padded, "teacher_tokens": int(lengths.sum()),
            "epochs": epochs, "teacher_outputs": result.training.teacher_cache,
            "precision": result.precision, "held_out_cosine": result.quality.teacher_agreement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=None, help="training texts (default: 8 batches' worth)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the texts (steps = epochs x batches)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 32 on CPU")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak used for MFU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from compress.training.batching import batches_per_epoch
    from compress.encoder.config import DEFAULT_BATCH_SIZE
    from compress.training.device import cpu_threads
    from export.base.corpus import Example, default_corpus, split_corpus
    from compress.encoder.teacher import resolve_teacher
    from export.base.files import atomic_write_json

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE[device]
    threads = args.threads or cpu_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    n_texts = args.texts or batch_size * 8
    # Texts whose own held-out split leaves a whole number of batches per epoch in the loop.
    pool = [e.text for e in default_corpus().examples]
    texts = pool[:n_texts]
    split = split_corpus([Example(t) for t in texts])
    train_texts = [e.text for e in split.train]
    steps = args.epochs * batches_per_epoch(len(train_texts), batch_size)
    _, teacher_dir = resolve_teacher(None)

    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "texts.txt"
        data_file.write_text("\n".join(texts) + "\n")
        print(f"device {device}, batch {batch_size}, {len(train_texts)} training texts, {steps} steps "
              f"({args.epochs} epochs)", flush=True)
        ours = our_loop(data_file, steps, batch_size, args.lr, device, 0, threads if device == "cpu" else None, Path(tmp))
        print(f"ours:  {ours['samples'] / ours['seconds']:.1f} samples/s", flush=True)
        plain = plain_loop(teacher_dir, train_texts, steps, batch_size, args.lr, device, 0)
        print(f"plain: {plain['samples'] / plain['seconds']:.1f} samples/s", flush=True)

    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "given with --peak-tflops"
    elif device == "cuda":
        name = torch.cuda.get_device_name()
        value = gpu_peak_tflops(name)
        peak = value * 1e12 if value else None
        peak_source = f"datasheet dense bf16 peak of {name}" if value else f"unknown GPU {name}: pass --peak-tflops"
    else:
        gflops = measured_cpu_peak_gflops(threads)
        peak, peak_source = gflops * 1e9, f"measured fp32 matmul throughput of this CPU ({threads} threads), not a datasheet peak"

    s_params, t_params = plain["student_matmul_params"], plain["teacher_matmul_params"]

    def summary(run: dict) -> dict:
        flops = 6 * s_params * run["real_tokens"] + 2 * t_params * run["teacher_tokens"]
        out = {k: v for k, v in run.items() if k not in ("student_matmul_params", "teacher_matmul_params")}
        out.update({"samples_per_s": round(run["samples"] / run["seconds"], 2),
                    "real_tokens_per_s": round(run["real_tokens"] / run["seconds"], 1),
                    "model_tflops_per_s": round(flops / run["seconds"] / 1e12, 4),
                    "mfu": round(flops / run["seconds"] / peak, 4) if peak else None,
                    "padding_fraction": round(1 - run["real_tokens"] / run["padded_tokens"], 4)})
        return out

    report = {
        "schema_version": 1,
        "benchmark": "distill_loop",
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "threads": threads if device == "cpu" else None,
        "torch": torch.__version__,
        "batch_size": batch_size,
        "steps": steps,
        "train_texts": len(train_texts),
        "student_matmul_params": s_params,
        "teacher_matmul_params": t_params,
        "peak_flops": peak,
        "peak_source": peak_source,
        "ours": summary(ours),
        "plain": summary(plain),
        "flops_formula": "6*student_params*real_tokens + 2*teacher_params*teacher_real_tokens (embeddings excluded)",
        "command": "python benchmarks/distill_loop.py",
    }
    report["speedup"] = round(report["ours"]["samples_per_s"] / report["plain"]["samples_per_s"], 2)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distillation loop on {device} ({report['device_name']}), batch {batch_size}, {steps} steps")
    for column in ("loop", "samples/s", "real tokens/s", "padding", "model TFLOP/s", "MFU"):
        table.add_column(column, justify="right")
    for name in ("ours", "plain"):
        row = report[name]
        table.add_row(name, f"{row['samples_per_s']:.1f}", f"{row['real_tokens_per_s']:.0f}", f"{row['padding_fraction']:.0%}",
                      f"{row['model_tflops_per_s']:.4f}", f"{row['mfu']:.1%}" if row["mfu"] is not None else "-")
    console = Console()
    console.print(table)
    console.print(f"speedup {report['speedup']}x; MFU peak: {peak_source}")
    out = args.out or RESULTS / f"distill_loop-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
