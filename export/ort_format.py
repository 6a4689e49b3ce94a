"""ONNX Runtime's ORT format: the model file ONNX Runtime Mobile (Android, iOS) loads.

An Android app links ``onnxruntime-android`` (or a reduced build of it) and opens a ``.ort`` file:
the graph optimised once at conversion, in a flatbuffer that loads without protobuf. The
conversion is onnxruntime's own (``onnxruntime.tools.convert_onnx_models_to_ort``); beside the
model it writes ``required_operators.config``, the operators a reduced build must keep
(``build.sh --include_ops_by_config``).

Host side: onnxruntime only (no torch, no onnx).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export.base.errors import CompressError

ORT_MODEL = "model.ort"
ORT_OPERATORS = "required_operators.config"


@dataclass(frozen=True)
class OrtFormatModel:
    """A model converted to the ORT format: the .ort and its reduced-operator config, side by side."""

    model: Path
    operators: Path


def convert_to_ort(model: Path, out_dir: Path, *, arch: str) -> OrtFormatModel:
    """``out_dir/model.ort`` and ``out_dir/required_operators.config`` from the ONNX ``model``.

    ``arch`` is the target's (``aarch64`` or ``x86_64``): on Arm the converter keeps int8 QDQ
    groups whole (``session.qdqisint8allowed``), and it never applies x86's NCHWc layouts there. The
    optimisations are fixed at conversion ("Fixed" style): the file runs as saved on every device
    of that architecture. Written into a temporary folder first, then moved; raises CompressError
    when onnxruntime cannot convert the model.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=out_dir) as scratch:
        source = Path(scratch) / "source"
        source.mkdir()
        # The converter takes every .onnx in a folder: give it this one (and its external data) alone.
        for file in [model, *model.parent.glob(f"{model.name}.data"), *model.parent.glob(f"{model.stem}.onnx_data")]:
            (source / file.name).symlink_to(file.resolve())
        converted = Path(scratch) / "converted"
        chatter = io.StringIO()  # the converter prints and logs its progress; a failure is ours to explain
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(source / model.name, output_dir=converted,
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform="arm" if arch == "aarch64" else "amd64")
        except Exception as exc:  # onnxruntime raises its own exception types, and ValueError
            raise CompressError(f"{model}: onnxruntime cannot convert it to the ORT format: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        made = converted / f"{model.stem}.ort"
        config = converted / f"{model.stem}.{ORT_OPERATORS}"  # named for the model when given one file
        if not made.is_file() or not config.is_file():
            raise CompressError(f"{model}: the ORT format conversion wrote no {made.name} or {ORT_OPERATORS}")
        targets = OrtFormatModel(out_dir / ORT_MODEL, out_dir / ORT_OPERATORS)
        shutil.move(made, targets.model.with_suffix(".ort.tmp"))
        targets.model.with_suffix(".ort.tmp").replace(targets.model)
        # The converter's header names its temporary folder: ours names the file, so packaging stays reproducible.
        lines = [line for line in config.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        temporary = targets.operators.with_suffix(".config.tmp")
        temporary.write_text("\n".join([f"# Operators {ORT_MODEL} needs (onnxruntime build.sh --include_ops_by_config)",
                                        *lines]) + "\n", encoding="utf-8")
        temporary.replace(targets.operators)
    return targets


def cached_ort_format(model: Path, cache_dir: Path, *, arch: str) -> OrtFormatModel:
    """The ORT format of ``model``, converted once per model and architecture into ``cache_dir``.

    onnxruntime's flatbuffer writer does not order its tables the same way twice, so converting at
    every packaging would make two archives of one run differ; the run keeps the first conversion.
    """
    from export.base.files import sha256_file

    stamp = cache_dir / "source.txt"
    wanted = f"{sha256_file(model)} {arch}\n"
    cached = OrtFormatModel(cache_dir / ORT_MODEL, cache_dir / ORT_OPERATORS)
    if cached.model.is_file() and cached.operators.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return cached
    stamp.unlink(missing_ok=True)
    made = convert_to_ort(model, cache_dir, arch=arch)
    stamp.with_suffix(".tmp").write_text(wanted)
    stamp.with_suffix(".tmp").replace(stamp)
    return made
