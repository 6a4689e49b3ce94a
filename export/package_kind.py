"""What ``compress package`` and ``MODEL_CARD.md`` say differently for each kind of release.

:class:`PackageKind` is the one interface packaging asks; :mod:`export.package_forward` (encoders
and classifiers) and :mod:`export.package_generation` (causal language models) fill it in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from export.base.records import StageRecord
    from export.runtime.bench import MeasuredRelease
    from export.runtime.manifest import LibraryLoad, Manifest, ModelSignature, OutputInfo, PromptFormat, \
        ReferenceOutput, TokenizerInfo
    from export.runtime.profiles import Profile
    from export.runtime.release_kind import ReleaseKind

EXAMPLE_DIR = Path(__file__).resolve().parent / "runtime" / "example"


class PackageKind(ABC):
    """The archive-side description of one kind of release."""

    release: ClassVar[ReleaseKind]
    extra_model_files: ClassVar[tuple[str, ...]] = ()  # beside the model, besides the tokenizer and config
    latency_plot: ClassVar[str]  # reports/<name>.png
    # Whether ONNX Runtime's ORT format (mobile) can carry this kind: onnxruntime 1.31 refuses to load
    # an .ort whose int4 weights have 4-bit zero points, which a language model's int4 release has.
    ort_format: ClassVar[bool] = False

    @abstractmethod
    def output_info(self, task: str, signature: ModelSignature, model_dir: Path, tokenizer: TokenizerInfo
                    ) -> OutputInfo:
        """Which output a caller reads and how (CompressError when the model lacks it)."""

    def prompt_format(self, model_dir: Path, tokenizer: TokenizerInfo) -> PromptFormat | None:
        """How a user's text becomes a prompt (language models); None where there is none."""
        return None

    @abstractmethod
    def reference_output(self, model_dir: Path, model_path: Path, manifest: Manifest) -> ReferenceOutput:
        """The build host's answer to a fixed input, which ``verify`` reproduces on the device."""

    @abstractmethod
    def latency_png(self, bench: MeasuredRelease, profile: Profile, title: str) -> bytes:
        """The plot of the release's speed against the profile's budgets."""

    def library_loads(self, manifest: Manifest, model_dir: Path) -> list[LibraryLoad]:
        """The libraries users already run that load this release folder, with the lines they type
        (run by ``verify --libraries`` on the manifest's reference input)."""
        return []

    def format_files(self, model_dir: Path, manifest: Manifest) -> dict[str, bytes]:
        """Files beside the model that another runtime needs to load it, made at packaging (name -> bytes)."""
        return {}

    def quality_extras(self, stages: dict[str, StageRecord]) -> dict[str, float]:
        """Quality figures beyond agreement, read from the run's stage records."""
        return {}

    @abstractmethod
    def readme(self, manifest: Manifest, profile: Profile) -> str:
        """example/README.md: how to call the model from any language."""

    # -- MODEL_CARD.md ---------------------------------------------------------------------------
    @abstractmethod
    def what_it_does(self, manifest: Manifest) -> list[str]: ...

    @abstractmethod
    def reference_check(self, manifest: Manifest) -> str:
        """What ``verify`` recomputes on the device, as the end of a sentence."""

    @abstractmethod
    def numbers_rows(self, manifest: Manifest, profile: Profile) -> list[str]:
        """This kind's rows of the card's numbers table: speed, size and memory against the budgets."""

    @abstractmethod
    def measured_on(self, manifest: Manifest) -> str:
        """One sentence: how and where the bench measured the release."""

    @abstractmethod
    def length_limit(self, manifest: Manifest, profile: Profile) -> str: ...


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the model card prints it ("not measured" for None)."""
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def budget_text(value: float | None, comparison: str = "<=", digits: int = 2) -> str:
    return f"{comparison} {fmt(value, digits)}" if value is not None else "-"


def host_words(bench_host: dict[str, Any]) -> str:
    return bench_host.get("description") or bench_host.get("cpu_model", "an unknown host")


def onnx_runtime_note(manifest: Manifest) -> str:
    if not manifest.model.other_opsets:
        return ""
    return (f"\nIt uses onnxruntime's own operators ({', '.join(manifest.model.other_opsets)}): a reduced (mobile) "
            "onnxruntime build must include them.")


def shape_text(spec: Any) -> str:
    return "[" + ", ".join(str(d) for d in spec.shape) + "]"


def reference_setup(manifest: Manifest, model_path: Path) -> tuple[dict[str, Any], Any]:
    """The manifest as the run directory lays the files out, and one-thread CPU session options.

    The build host's reference answer is computed this way so that any device can reproduce it
    (one thread: the same summation order).
    """
    import onnxruntime as ort

    local = manifest.to_json()
    local["model"]["path"] = model_path.name
    local["tokenizer"]["file"] = "tokenizer.json"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return local, options
