"""The model tasks the project supports, read from a Hugging Face folder.

One place decides what a folder is (sentence encoder, sequence classifier, token classifier,
causal language model)
and how a sentence encoder pools its token states, so distillation, export and packaging all
agree on what "the model's output" means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from export.base.errors import CompressError

Task = Literal["feature-extraction", "text-classification", "token-classification"]
SUPPORTED_TASKS: tuple[Task, ...] = ("feature-extraction", "text-classification", "token-classification")
# Causal language models: one task, exported with the KV cache and benchmarked by generation.
TEXT_GENERATION = "text-generation"
ALL_TASKS: tuple[str, ...] = (*SUPPORTED_TASKS, TEXT_GENERATION)
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")

_ARCHITECTURE_SUFFIX: dict[str, Task] = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "Model": "feature-extraction",
}


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence embedding (sentence-transformers' 1_Pooling + Normalize)."""

    mode: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CompressError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CompressError(f"{path} is not valid JSON") from None


def detect_task(model_dir: Path, override: str | None = None) -> Task:
    """The folder's task from its config's architecture, or ``override`` when given (``auto`` = detect)."""
    if override and override != "auto":
        if override not in SUPPORTED_TASKS:
            raise CompressError(f"unsupported task {override!r}; supported: {', '.join(SUPPORTED_TASKS)}")
        return override  # type: ignore[return-value]
    if is_sentence_transformer(model_dir):
        # sentence-transformers loads the base model whatever head the config names (all-mpnet-base-v2
        # says MPNetForMaskedLM): the folder is a sentence encoder.
        return "feature-extraction"
    config = read_config(model_dir)
    for architecture in config.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_SUFFIX.items():
            # "GPT2LMHeadModel" ends in "Model" but generates text; it is not an encoder.
            if architecture.endswith(suffix) and not (suffix == "Model" and "LMHead" in architecture):
                return task
    found = ", ".join(config.get("architectures") or []) or "none"
    raise CompressError(
        f"{model_dir}: cannot tell the task from its architectures ({found}); supported tasks: "
        f"{', '.join(SUPPORTED_TASKS)} (pass --task to choose one)"
    )


def is_sentence_transformer(model_dir: Path) -> bool:
    return (Path(model_dir) / "modules.json").is_file()


def read_pooling(model_dir: Path) -> Pooling:
    """The sentence-transformers pooling of a folder; mean pooling + L2 normalisation when it has none."""
    model_dir = Path(model_dir)
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return Pooling()
    modules = json.loads(modules_path.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    mode: Literal["mean", "cls", "max"] = "mean"
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config_path = model_dir / module.get("path", "") / "config.json"
            if config_path.is_file():
                config = json.loads(config_path.read_text())
                if config.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif config.get("pooling_mode_max_tokens"):
                    mode = "max"
    return Pooling(mode=mode, normalize=normalize)


def is_causal_lm(model_dir: Path) -> bool:
    """Whether ``model_dir``'s config.json names a causal-LM architecture (``*ForCausalLM``, ``*LMHeadModel``)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = (config.get("architectures") if isinstance(config, dict) else None) or []
    return any(isinstance(a, str) and a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures)
