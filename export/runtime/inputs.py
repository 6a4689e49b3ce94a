"""What to feed a model under benchmark: inputs built from its own signature, or real samples.

``bench`` takes any ONNX model, so it cannot assume BERT's three inputs. It reads the names,
element types and shapes the model declares, resolves dynamic dimensions from the profile's
workload (a batch dimension gets ``batch_size``, a sequence dimension ``sequence_length``) and
fills each input with values a real caller would send: token ids inside the vocabulary
(read from the embedding table the ids index), an attention mask of ones, token type ids of
zeros, position ids ``0..n-1``, standard-normal floats. Or it loads real samples from an
``.npz`` file.

numpy only (no onnx import): the graph, when there is one to look at, is passed in already parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.base.errors import CompressError

# ONNX Runtime's element type names → numpy dtypes.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
# When no embedding table tells us the vocabulary: small enough for any text model's table.
FALLBACK_ID_RANGE = 1000
# Dimension names that say what a dynamic axis is (optimum, transformers and torch exports use these).
_BATCH_WORDS = ("batch",)
_SEQUENCE_WORDS = ("sequence", "seq", "length", "len", "token", "time", "step")
_IMAGE_WORDS = ("height", "width")
IMAGE_SIDE = 224
# Ops an id tensor may pass through on its way to the embedding Gather.
_PASS_THROUGH_OPS = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


@dataclass
class InputSpec:
    """One model input: what the model declares and what the benchmark fed it."""

    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    declared_shape: list[int | str | None]  # as the model declares it; str/None are dynamic
    shape: list[int]  # what was fed
    fill: str  # how the values were made: "token ids in [0, 30522)", "ones", "npz", ...


def numpy_dtype(ort_type: str) -> np.dtype:
    """The numpy dtype for an ONNX Runtime type string such as ``tensor(int64)``."""
    if ort_type not in _ORT_DTYPES:
        raise CompressError(f"bench cannot build inputs of type {ort_type}; pass real samples with --inputs FILE.npz")
    return np.dtype(_ORT_DTYPES[ort_type])


def _role(name: str) -> str:
    lowered = name.lower()
    if "mask" in lowered:
        return "mask"
    if "token_type" in lowered or "segment" in lowered:
        return "token_type"
    if "position" in lowered:
        return "position"
    if "ids" in lowered or lowered in {"input", "tokens"}:
        return "ids"
    return "other"


def _resolve_dim(dim: int | str | None, index: int, rank: int, input_name: str, *, batch_size: int,
                 sequence_length: int) -> tuple[int, str | None]:
    """A concrete size for one declared dimension, and which workload knob it came from."""
    if isinstance(dim, int) and dim > 0:
        return dim, None
    label = str(dim).lower() if isinstance(dim, str) else ""
    if any(word in label for word in _BATCH_WORDS):
        return batch_size, "batch"
    if any(word in label for word in _SEQUENCE_WORDS):
        return sequence_length, "sequence"
    if any(word in label for word in _IMAGE_WORDS):
        return IMAGE_SIDE, "image"
    # Unnamed dynamic axes: the first is the batch, the second the sequence for rank-2/3 inputs
    # (ids, masks, hidden states); anything else has no meaning we could guess.
    if index == 0:
        return batch_size, "batch"
    if index == 1 and rank in (2, 3):
        return sequence_length, "sequence"
    raise CompressError(
        f"input {input_name!r} has a dynamic dimension {dim!r} (axis {index}) that bench cannot size; "
        "pass real samples with --inputs FILE.npz"
    )


def id_vocab_sizes(graph: Any, input_names: Iterable[str]) -> dict[str, int]:
    """For each integer input that indexes an embedding table, the table's row count.

    ``graph`` is an ``onnx.GraphProto``. An input counts when it reaches the indices side of a
    ``Gather`` (possibly through Cast/Reshape/Unsqueeze...) whose data side is an initializer,
    or an initializer passed through DequantizeLinear/Cast (quantized and fp16 models).
    """
    initializer_rows = {init.name: int(init.dims[0]) for init in graph.initializer if len(init.dims) >= 1}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def table_rows(tensor: str) -> int | None:
        if tensor in initializer_rows:
            return initializer_rows[tensor]
        node = producers.get(tensor)
        if node is not None and node.op_type in {"DequantizeLinear", "Cast", "Identity"} and node.input:
            return initializer_rows.get(node.input[0])
        return None

    sizes: dict[str, int] = {}
    for name in input_names:
        frontier, seen = [name], set()
        while frontier and name not in sizes:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == tensor:
                    rows = table_rows(node.input[0])
                    if rows:
                        sizes[name] = rows
                        break
                elif node.op_type in _PASS_THROUGH_OPS:
                    frontier.extend(node.output)
    return sizes


def synthesize_inputs(signature: list[Any], *, batch_size: int, sequence_length: int,
                      vocab_sizes: dict[str, int] | None = None, seed: int = 0
                      ) -> tuple[dict[str, np.ndarray], list[InputSpec], dict[str, bool]]:
    """Feeds for a model's inputs, built from its declared signature and the workload.

    ``signature`` is ``session.get_inputs()`` (objects with ``name``, ``type``, ``shape``).
    Returns the feeds, a description of each input, and which workload knobs some dynamic
    dimension used (``{"batch": True, "sequence": False, ...}``) so the report can say whether
    ``sequence_length`` meant anything for this model.
    """
    rng = np.random.default_rng(seed)
    vocab_sizes = vocab_sizes or {}
    feeds: dict[str, np.ndarray] = {}
    specs: list[InputSpec] = []
    used = {"batch": False, "sequence": False, "image": False}
    for arg in signature:
        dtype = numpy_dtype(arg.type)
        declared = list(arg.shape)
        shape = []
        for index, dim in enumerate(declared):
            size, knob = _resolve_dim(dim, index, len(declared), arg.name, batch_size=batch_size,
                                      sequence_length=sequence_length)
            shape.append(size)
            if knob:
                used[knob] = True
        role = _role(arg.name)
        if dtype.kind == "b":
            array, fill = np.ones(shape, dtype=dtype), "true"
        elif dtype.kind in "iu":
            if role == "mask":
                array, fill = np.ones(shape, dtype=dtype), "ones"
            elif role == "token_type":
                array, fill = np.zeros(shape, dtype=dtype), "zeros"
            elif role == "position":
                steps = shape[-1] if shape else 1
                array = np.broadcast_to(np.arange(steps, dtype=dtype), shape).copy()
                fill = f"positions 0..{steps - 1}"
            elif role == "ids" or arg.name in vocab_sizes:
                high = vocab_sizes.get(arg.name)
                fill = f"token ids in [0, {high})" if high else f"token ids in [0, {FALLBACK_ID_RANGE}) (vocabulary not found in the graph)"
                high = high or FALLBACK_ID_RANGE
                upper = min(high, np.iinfo(dtype).max)
                array = rng.integers(0, upper, size=shape, dtype=dtype)
            else:
                array, fill = np.zeros(shape, dtype=dtype), "zeros"
        else:
            array = rng.standard_normal(shape).astype(dtype)
            fill = "standard normal"
        feeds[arg.name] = array
        specs.append(InputSpec(arg.name, dtype.name, declared, shape, fill))
    return feeds, specs, used


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file of real samples (``allow_pickle=False``: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"inputs file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # pickled object arrays (refused), or not numpy at all
        raise CompressError(f"cannot read inputs {path} as an .npz of arrays: {exc}") from None
    if isinstance(loaded, np.ndarray):
        raise CompressError(f"inputs {path} is a single .npy array; --inputs takes an .npz with one array per model "
                            "input, named as the inputs (numpy.savez(path, input_ids=..., attention_mask=...))")
    try:
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise CompressError(f"cannot read inputs {path} as an .npz of arrays: {exc}") from None
    if not arrays:
        raise CompressError(f"inputs file {path} holds no arrays")
    return arrays


def match_npz(arrays: dict[str, np.ndarray], signature: list[Any], path: Path) -> dict[str, np.ndarray]:
    """Feeds for one model from the npz arrays, checked against its declared inputs.

    Every input must be present with the declared rank, fixed dimensions and element family
    (integers may be cast to another integer width, floats to another float width).
    """
    missing = sorted(arg.name for arg in signature if arg.name not in arrays)
    if missing:
        raise CompressError(f"inputs file {path} lacks {', '.join(missing)}; the model takes: "
                            f"{', '.join(arg.name for arg in signature)} (found: {', '.join(sorted(arrays))})")
    feeds: dict[str, np.ndarray] = {}
    for arg in signature:
        name = arg.name
        array, dtype, declared = arrays[name], numpy_dtype(arg.type), list(arg.shape)
        if array.ndim != len(declared):
            raise CompressError(f"inputs file {path}: {name} has {array.ndim} dimensions, the model expects "
                                f"{len(declared)} {declared}")
        for axis, (size, dim) in enumerate(zip(array.shape, declared)):
            if isinstance(dim, int) and dim > 0 and size != dim:
                raise CompressError(f"inputs file {path}: {name} has size {size} on axis {axis}, the model expects {dim}")
        if array.dtype != dtype:
            same_family = (array.dtype.kind in "iu" and dtype.kind in "iu") or (array.dtype.kind == "f" and dtype.kind == "f")
            if not same_family:
                raise CompressError(f"inputs file {path}: {name} is {array.dtype}, the model expects {dtype}")
            array = array.astype(dtype)
        feeds[name] = np.ascontiguousarray(array)
    return feeds


def check_npz_names_used(arrays: dict[str, np.ndarray], signatures: list[list[Any]], path: Path) -> None:
    """An array no model takes is an error: a misspelt input name must not be silently ignored."""
    wanted = {arg.name for signature in signatures for arg in signature}
    extra = sorted(set(arrays) - wanted)
    if extra:
        raise CompressError(f"inputs file {path} has arrays the model does not take: {', '.join(extra)}; "
                            f"the model takes: {', '.join(sorted(wanted))}")


def describe_npz_inputs(feeds: dict[str, np.ndarray], signature: list[Any]) -> list[InputSpec]:
    """Input descriptions for feeds that came from a file."""
    return [InputSpec(arg.name, feeds[arg.name].dtype.name, list(arg.shape), list(feeds[arg.name].shape), "npz")
            for arg in signature]
