"""Recipes: a run of ``compress distill`` written down as a commented YAML file.

A recipe's sections are the command's option groups; each key is one option::

    profile: jetson
    teacher: {name: all-minilm-l6-v2}
    student: {spec: auto}
    training: {time_budget: 10m, lr: 0.0005}

``compress distill --config FILE`` reads it; an option given on the command line wins over the
file. Every run writes the recipe it ran with, every option spelled out, to ``RUN_DIR/recipe.yaml``,
so ``compress distill --config runs/X/recipe.yaml`` repeats the run (the same settings make the
same stage fingerprints, so finished stages are skipped). An unknown section or key, or a value
of the wrong type, is a one-line error naming it. The same table groups the options of
``compress distill --help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError

if TYPE_CHECKING:
    import click

MAX_RECIPE_BYTES = 64 * 1024
TOP = ""  # the section of keys written at the top level of a recipe


@dataclass(frozen=True)
class Section:
    """One group of options: the recipe's section and the heading in ``--help``."""

    name: str
    title: str
    keys: dict[str, str]  # key in the recipe -> the option's parameter name


SECTIONS = (
    Section(TOP, "Run", {"profile": "profile_name", "out": "run_dir", "stop_after": "stop_after"}),
    Section("teacher", "Teacher", {"name": "teacher", "task": "task", "quant": "teacher_quant",
                                   "trust_remote_code": "trust_remote_code", "answers": "teacher_answers",
                                   "answer_tokens": "answer_tokens", "sample": "sample", "top_p": "top_p"}),
    Section("endpoint", "Endpoint teacher (a teacher you can only query)",
            {"url": "teacher_url", "model": "teacher_model", "student_from": "student_from",
             "api_key_env": "api_key_env", "concurrency": "concurrency", "rate_limit": "rate_limit"}),
    Section("student", "Student", {"spec": "student", "embeddings": "embeddings"}),
    Section("data", "Data", {"path": "data", "max_length": "max_length"}),
    Section("training", "Training", {"max_steps": "max_steps", "epochs": "epochs", "time_budget": "time_budget",
                                     "batch_size": "batch_size", "lr": "lr", "seed": "seed", "device": "device",
                                     "threads": "threads", "nproc": "nproc",
                                     "neighbour_batches": "neighbour_batches",
                                     "precision": "train_precision", "teacher_state_cache": "teacher_state_cache",
                                     "train_anyway": "train_anyway"}),
    Section("losses", "Losses", {"embedding": "embedding_loss", "hidden_weight": "hidden_weight",
                                 "attention_weight": "attention_weight", "relation_weight": "relation_weight",
                                 "relation": "relation_loss", "alpha": "alpha",
                                 "temperature": "temperature", "lm": "lm_loss", "jsd_beta": "jsd_beta",
                                 "topk": "topk"}),
    Section("prune", "Pruning", {"heads": "prune_heads", "ffn": "prune_ffn", "recover_steps": "recover_steps"}),
    Section("quantize", "Quantization", {"precision": "precision", "block_size": "block_size"}),
    Section("bench", "Bench", {"on": "on"}),
)
# Options of one invocation, never of a recipe: how to run it, not what it computes.
COMMAND_LINE_ONLY = ("config", "resume", "as_json")


def section_of(parameter: str) -> Section | None:
    """The section a parameter belongs to (None: a command-line-only option)."""
    return next((section for section in SECTIONS if parameter in section.keys.values()), None)


def recipe_key(parameter: str) -> str:
    """How a recipe spells a parameter: ``training.lr``, or ``profile`` at the top."""
    section = section_of(parameter)
    if section is None:
        raise KeyError(parameter)
    key = next(k for k, v in section.keys.items() if v == parameter)
    return f"{section.name}.{key}" if section.name else key


def read_recipe(path: Path, command: click.Command, ctx: click.Context) -> dict[str, Any]:
    """The options a recipe file sets (parameter name -> value, converted and checked as the flag would be)."""
    import click

    from export.base.yaml_file import read_yaml_mapping  # not on the path of `compress distill --help`

    raw = read_yaml_mapping(path, "recipe", max_bytes=MAX_RECIPE_BYTES)
    params = {param.name: param for param in command.params}
    sections = {section.name: section for section in SECTIONS if section.name}
    top = SECTIONS[0]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in top.keys:
            entries = {key: value}
            section = top
        elif key in sections:
            section = sections[key]
            if value is None:
                continue
            if not isinstance(value, dict):
                raise CompressError(f"recipe {path}: {key} must be a section of keys, such as {key}: {{...}}")
            entries = value
        else:
            known = ", ".join([*top.keys, *sections])
            raise CompressError(f"recipe {path}: {key}: unknown key; a recipe has {known}")
        for name, entry in entries.items():
            where = f"{section.name}.{name}" if section.name else str(name)
            if name not in section.keys:
                raise CompressError(f"recipe {path}: {where}: unknown key; {section.name or 'the top level'} has "
                                    f"{', '.join(section.keys)}")
            parameter = params[section.keys[name]]
            if entry is None:
                values[parameter.name] = None
                continue
            if isinstance(entry, (dict, list)):
                raise CompressError(f"recipe {path}: {where}: expected a single value, found a "
                                    f"{type(entry).__name__}")
            try:
                converted = parameter.type_cast_value(ctx, entry)
                if parameter.callback is not None:
                    converted = parameter.callback(ctx, parameter, converted)
            except click.BadParameter as exc:
                raise CompressError(f"recipe {path}: {where}: {exc.message}") from None
            values[parameter.name] = converted
    return values


def write_recipe(path: Path, settings: dict[str, Any], *, source: str) -> Path:
    """``settings`` (parameter name -> value) as a recipe, every section written out, atomically."""
    import yaml

    from export.base.files import atomic_write_text

    document: dict[str, Any] = {}
    for section in SECTIONS:
        block = {key: _plain(settings.get(parameter)) for key, parameter in section.keys.items()
                 if parameter in settings}
        if section.name:
            document[section.name] = block
        else:
            document.update(block)
    header = (f"# The recipe this run ran with ({source}).\n"
              f"# Repeat it: compress distill --config {path}\n"
              "# (finished stages are skipped: the same settings make the same fingerprints)\n")
    return atomic_write_text(path, header + yaml.safe_dump(document, sort_keys=False))


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
