"""Target profiles: what a release must satisfy on one kind of device.

A profile is a YAML file. The shipped ones live in ``profiles/`` of a checkout and in
``export/runtime/profile_data/`` of an installed wheel; a path to a user's own file works wherever a
name does. Every file is validated on load: an unknown key, a wrong type or a negative budget
is a :class:`~export.base.errors.CompressError` naming the file and the key.

Light on purpose (pydantic and pyyaml only): ``bench``, ``gate`` and ``verify`` load profiles
on the device, where torch is not installed.
"""

from __future__ import annotations

import difflib
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from export.base.errors import CompressError
from export.base.yaml_file import read_yaml_mapping

Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static", "int4-weight"]
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

MAX_PROFILE_BYTES = 64 * 1024
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"1.5h"`` or a bare number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration (examples: 90s, 10m, 1.5h)")
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


Pattern = Annotated[str, AfterValidator(_regex)]


class GpuFacts(_Strict):
    name_pattern: Pattern = Field(description="regex matched against the GPU name the runtime reports")
    compute_capability: str | None = None
    fp16_tflops: PositiveFloat | None = None
    int8_tops: PositiveFloat | None = None


class CpuFacts(_Strict):
    cores: PositiveInt
    model: str | None = Field(None, description="core type, for people (e.g. Cortex-A76)")
    model_pattern: Pattern | None = Field(
        None, description="regex the host's CPU or board name must match for a verified run"
    )
    isa: list[str] = Field(
        default_factory=list, description="CPU flags a matching host must have (avx2, avx512_vnni, asimddp, ...)"
    )
    fp32_gflops: PositiveFloat | None = None
    int8_gops: PositiveFloat | None = None


class Hardware(_Strict):
    device: Literal["cpu", "gpu", "any"]
    arch: Literal["x86_64", "aarch64", "any"]
    cpu: CpuFacts | None = None
    gpu: GpuFacts | None = None
    memory_gb: PositiveFloat | None = None
    memory_bandwidth_gbs: PositiveFloat | None = None


class Runtime(_Strict):
    providers: list[str] = Field(min_length=1)
    intra_op_threads: PositiveInt | None = None
    inter_op_threads: PositiveInt | None = None
    # The archive also carries the model in ONNX Runtime's ORT format (what ONNX Runtime Mobile loads).
    ort_format: bool = False


class GenerationWorkload(_Strict):
    """What a generation bench measures: a prompt of ``prompt_length`` tokens, then ``new_tokens`` greedy tokens."""

    prompt_length: PositiveInt = 128
    new_tokens: PositiveInt = 64


class Workload(_Strict):
    batch_size: PositiveInt = 1
    sequence_length: PositiveInt = 128
    # Causal LMs (models with a KV cache) are measured by generating; None: GenerationWorkload's defaults.
    generation: GenerationWorkload | None = None

    @property
    def generation_or_default(self) -> GenerationWorkload:
        return self.generation or GenerationWorkload()


class LatencyBudget(_Strict):
    p50: PositiveFloat | None = None
    p95: PositiveFloat | None = None
    p99: PositiveFloat | None = None


class QualityBudget(_Strict):
    # The task's agreement with the teacher on held-out data: mean cosine for embeddings,
    # argmax agreement for classifiers, next-token agreement for causal LMs.
    min_teacher_agreement: Fraction | None = None
    # Largest drop in that agreement quantization may cost against the fp32 ONNX model.
    max_quantization_drop: Fraction = 0.01
    # Sentence embeddings: the share of each held-out text's top-10 neighbours the release keeps, and
    # the Spearman correlation of its pairwise cosines with the teacher's (what search and
    # deduplication read).
    min_neighbour_agreement: Fraction | None = None
    min_similarity_spearman: Fraction | None = None
    # Causal LMs: the student's held-out perplexity over the teacher's (fp32, PyTorch), and what the
    # release precision may cost on top (quantized over fp32 ONNX perplexity; int4 settings are tried
    # in order until one fits).
    max_perplexity_ratio: PositiveFloat | None = None
    max_quantization_perplexity_ratio: PositiveFloat | None = None


class GenerationBudget(_Strict):
    """Budgets for a causal LM's generation bench (see export/gate.py for how each is checked).

    ``ttft_ms`` (time to first token: the prompt's prefill) and ``tpot_ms`` (time per output token
    after the first, a run's mean) are checked at their p95 over the timed runs; ``tokens_per_s``
    is a floor on new tokens per second of whole generations, prefill included. A language model
    is several times an encoder student's size, so ``model_size_mb`` / ``peak_memory_mb`` here,
    when set, replace the top-level ones for generation models.
    """

    ttft_ms: PositiveFloat | None = None
    tpot_ms: PositiveFloat | None = None
    tokens_per_s: PositiveFloat | None = None
    model_size_mb: PositiveFloat | None = None
    peak_memory_mb: PositiveFloat | None = None


class Budgets(_Strict):
    latency_ms: LatencyBudget = LatencyBudget()
    model_size_mb: PositiveFloat | None = None
    peak_memory_mb: PositiveFloat | None = None
    quality: QualityBudget = QualityBudget()
    generation: GenerationBudget = GenerationBudget()


class PruneDefaults(_Strict):
    heads: Fraction = 0.0  # fraction of attention heads the chain removes after distillation
    ffn: Fraction = 0.0  # fraction of FFN neurons
    recover_steps: Annotated[int, Field(ge=0)] = 100  # recovery distillation after pruning


class DistillDefaults(_Strict):
    student: str = Field(description="student spec, as `--student` takes it")
    why: str = Field(description="one line printed when `--student auto` picks this size")
    time_budget: str = "10m"
    prune: PruneDefaults = PruneDefaults()
    # Sentence embeddings: weight of the loss matching each student layer's states to the teacher
    # layer it was copied from. It costs a teacher pass every step (its outputs can no longer be
    # cached), which pays for a student near the teacher's size and not for a much smaller one
    # (benchmarks/results/student_recipes-480s.json); `--hidden-weight` overrides it.
    hidden_weight: NonNegativeFloat = 0.0

    @field_validator("time_budget")
    @classmethod
    def _valid_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def time_budget_s(self) -> float:
        return parse_duration(self.time_budget)


class Profile(_Strict):
    """One target device and the budgets a release must meet on it."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str
    hardware: Hardware
    runtime: Runtime
    precision: Precision
    workload: Workload = Workload()
    budgets: Budgets = Budgets()
    distill: DistillDefaults
    source: Path | None = Field(None, exclude=True, description="file the profile was read from")

    @cached_property
    def quantization_preset(self) -> str:
        """The ONNX Runtime quantization preset this target wants (arm64, avx2, avx512_vnni, tensorrt)."""
        if self.hardware.device == "gpu":
            return "tensorrt"
        isa = set(self.hardware.cpu.isa if self.hardware.cpu else [])
        if self.hardware.arch == "aarch64":
            return "arm64"
        if "avx512_vnni" in isa:
            return "avx512_vnni"
        return "avx2"


def _shipped_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # An installed wheel carries the YAML files inside the package; a checkout keeps them at the root.
    return [p for p in (here / "profile_data", here.parents[1] / "profiles") if p.is_dir()]


def _shipped_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in _shipped_dirs():
        for path in sorted(folder.glob("*.yaml")):
            files.setdefault(path.stem, path)
    return files


def _format_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"profile {path}: {key}: {message}{suffix}"


def load_profile_file(path: str | Path) -> Profile:
    """Read and validate one profile YAML file.

    A user's file may not take a shipped profile's name or alias: its verdicts would read as the
    shipped profile's.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "profile", max_bytes=MAX_PROFILE_BYTES)
    if "source" in raw:
        raise CompressError(f"profile {path}: source: unknown key")
    try:
        profile = Profile.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise CompressError(_format_error(path, exc)) from None
    if not is_shipped(path):
        taken = _shipped_names() & {profile.name, *profile.aliases}
        if taken:
            raise CompressError(f"profile {path}: name {sorted(taken)[0]!r} belongs to a shipped profile; give your "
                                "own profile its own name (and aliases)")
    return profile


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is one of the profile files this package ships."""
    resolved = Path(path).resolve()
    return any(resolved == shipped.resolve() for shipped in _shipped_files().values())


def load_carried_profile(path: str | Path) -> Profile:
    """A profile carried inside an archive or a run directory.

    One that bears a shipped profile's name is that shipped profile, read from this tool's own copy:
    an edited copy inside an archive must not pass for it. Any other is read from the file.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size <= MAX_PROFILE_BYTES:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raw = None
        if isinstance(raw, dict) and str(raw.get("name")) in _shipped_files():
            return load_profile(str(raw["name"]))
    return load_profile_file(path)


def carried_profile_drift(path: str | Path) -> str | None:
    """How a carried profile that bears a shipped name differs from this tool's copy, or None.

    ``load_carried_profile`` gates against this tool's copy; when the profile changed between the
    release's build and now (or the carried copy was edited), the user should hear which settings moved.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_PROFILE_BYTES:
        return None
    try:
        carried = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(carried, dict):
        return None
    shipped_path = _shipped_files().get(str(carried.get("name")))
    if shipped_path is None:
        return None
    shipped = yaml.safe_load(shipped_path.read_text(encoding="utf-8")) or {}
    moved = sorted(_changed_keys(carried, shipped))
    if not moved:
        return None
    shown = ", ".join(moved[:4]) + (f" and {len(moved) - 4} more" if len(moved) > 4 else "")
    return (f"the archive's {path.name} differs from this tool's {carried['name']} profile ({shown}); "
            "gated against this tool's copy")


def _changed_keys(left: object, right: object, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two parsed YAML mappings."""
    if isinstance(left, dict) and isinstance(right, dict):
        changed: set[str] = set()
        for key in set(left) | set(right):
            changed |= _changed_keys(left.get(key), right.get(key), f"{prefix}{key}.")
        return changed
    return set() if left == right else {prefix.rstrip(".")}


def _shipped_names() -> set[str]:
    """Every shipped profile's name and alias, read without validating (no recursion into this check)."""
    names: set[str] = set()
    for name, path in _shipped_files().items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        names |= {name, str(raw.get("name", name)), *map(str, raw.get("aliases", []))}
    return names


def list_profiles() -> list[Profile]:
    """Every shipped profile, sorted by name."""
    return [load_profile_file(path) for path in _shipped_files().values()]


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name or alias, or a user's YAML file by path.

    A bare word is always a shipped profile (a file called ``jetson`` in the current folder is not
    read); anything with a slash or a ``.yaml``/``.yml`` ending is a path.
    """
    text = str(name_or_path)
    candidate = Path(text)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        return load_profile_file(candidate)
    shipped = _shipped_files()
    if text in shipped:
        return load_profile_file(shipped[text])
    for profile in list_profiles():
        if text in profile.aliases:
            return profile
    known = {name: repr(name) for name in shipped}
    for profile in list_profiles():
        known.update({alias: f"{alias!r}, an alias of {profile.name}" for alias in profile.aliases})
    close = difflib.get_close_matches(text, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {known[close[0]]}?)" if close else ""
    listing = ", ".join(f"{p.name} ({', '.join(p.aliases)})" if p.aliases else p.name for p in list_profiles())
    raise CompressError(f"unknown profile {text!r}{hint}; shipped profiles: {listing}; or pass a YAML file")
