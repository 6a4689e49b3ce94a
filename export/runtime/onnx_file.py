"""An ONNX file on disk: its size with external weights, and the facts read from its protobuf.

No onnx package: a device may not have it, and the bench must still count external data files
toward the model size and find the embedding table's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.base.errors import CompressError
from export.runtime.inputs import id_vocab_sizes


def onnx_size_bytes(path: Path) -> int:
    """Size of an ONNX file with its external data files, if any."""
    path = Path(path)
    total = path.stat().st_size
    total += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}_data*") if p.is_file())
    total += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data") if p.is_file())
    return total


@dataclass
class DataFile:
    """One file of the model on disk: the .onnx itself or an external data file it references."""

    path: str
    bytes: int



@dataclass
class GraphFacts:
    files: list[DataFile]
    opset: int | None
    producer: str | None
    vocab_sizes: dict[str, int]


# A minimal reader of ONNX's protobuf wire format. bench runs on devices where the onnx package is
# not installed, yet it must count external data files toward the model size (a size budget must
# never pass on a partial count) and find the embedding table's vocabulary. It walks only the
# fields below and skips weight bytes without reading them (the file is memory-mapped).
# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto).
_MODEL_PRODUCER, MODEL_GRAPH, _MODEL_OPSET = 2, 7, 8
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, GRAPH_INPUT, _GRAPH_SPARSE_INITIALIZER = 1, 5, 11, 15
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 4, 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_DIMS, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 1, 8, 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
VALUE_INFO_NAME, _VALUE_INFO_TYPE, _TYPE_TENSOR, _TENSOR_TYPE_ELEM = 1, 2, 1, 1
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_INTEGER_ELEM_TYPES = {6, 7}  # INT32, INT64: what token ids come as


class WireError(ValueError):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: Any, start: int, end: int):
    """(field number, wire type, value) for one message; length-delimited values are (start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError("field runs past its message")
            value, pos = (pos, pos + length), pos + length
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise WireError(f"wire type {wire}")
        if number == 0 or pos > end:
            raise WireError("bad field")
        yield number, wire, value


def text_of(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


@dataclass
class _Tensor:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    external_locations: list[str] = field(default_factory=list)


@dataclass
class _Node:
    op_type: str = ""
    input: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)


@dataclass
class _Graph:
    """The parts of an ONNX graph bench needs, with onnx's attribute names (id_vocab_sizes takes either)."""

    node: list[_Node] = field(default_factory=list)
    initializer: list[_Tensor] = field(default_factory=list)
    integer_inputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    external_locations: set[str] = field(default_factory=set)  # this graph's and its subgraphs'


def _read_tensor(buf: Any, span: tuple[int, int]) -> _Tensor:
    tensor, external, entries = _Tensor(), False, []
    for number, wire, value in fields(buf, *span):
        if number == _TENSOR_DIMS and wire == 0:
            tensor.dims.append(value)
        elif number == _TENSOR_DIMS and wire == 2:  # packed
            pos = value[0]
            while pos < value[1]:
                dim, pos = _varint(buf, pos, value[1])
                tensor.dims.append(dim)
        elif number == _TENSOR_NAME and wire == 2:
            tensor.name = text_of(buf, value)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {k: text_of(buf, v) for k, w, v in fields(buf, *value) if w == 2}
            if entry.get(_ENTRY_KEY) == "location" and _ENTRY_VALUE in entry:
                entries.append(entry[_ENTRY_VALUE])
    tensor.external_locations = entries if external else []
    return tensor


def _read_graph(buf: Any, span: tuple[int, int]) -> _Graph:
    graph = _Graph()

    def take(tensor: _Tensor) -> _Tensor:
        graph.external_locations.update(tensor.external_locations)
        return tensor

    def sub(span: tuple[int, int]) -> None:
        graph.external_locations.update(_read_graph(buf, span).external_locations)

    for number, wire, value in fields(buf, *span):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            graph.initializer.append(take(_read_tensor(buf, value)))
        elif number == _GRAPH_SPARSE_INITIALIZER:
            for n, w, v in fields(buf, *value):
                if w == 2 and n in (_SPARSE_VALUES, _SPARSE_INDICES):
                    take(_read_tensor(buf, v))
        elif number == GRAPH_INPUT:
            name, elem = "", None
            for n, w, v in fields(buf, *value):
                if n == VALUE_INFO_NAME and w == 2:
                    name = text_of(buf, v)
                elif n == _VALUE_INFO_TYPE and w == 2:
                    for tn, tw, tv in fields(buf, *v):
                        if tn == _TYPE_TENSOR and tw == 2:
                            elem = next((ev for en, ew, ev in fields(buf, *tv) if en == _TENSOR_TYPE_ELEM and ew == 0), None)
            graph.inputs.append(name)
            if elem in _INTEGER_ELEM_TYPES:
                graph.integer_inputs.append(name)
        elif number == _GRAPH_NODE:
            node = _Node()
            for n, w, v in fields(buf, *value):
                if w != 2:
                    continue
                if n == _NODE_INPUT:
                    node.input.append(text_of(buf, v))
                elif n == _NODE_OUTPUT:
                    node.output.append(text_of(buf, v))
                elif n == _NODE_OP_TYPE:
                    node.op_type = text_of(buf, v)
                elif n == _NODE_ATTRIBUTE:
                    for an, aw, av in fields(buf, *v):
                        if aw == 2 and an in (_ATTR_TENSOR, _ATTR_TENSORS):
                            take(_read_tensor(buf, av))
                        elif aw == 2 and an in (_ATTR_GRAPH, _ATTR_GRAPHS):
                            sub(av)
            graph.node.append(node)
    return graph


@dataclass
class GraphIO:
    """A graph's input names, and the op type of the node that writes each value."""

    inputs: list[str]
    producers: dict[str, str]


def read_graph_io(path: Path) -> GraphIO:
    """The top-level graph's inputs and producers, read without loading weights or a session.

    Raises WireError, IndexError or OSError for a file that is not a readable ONNX model.
    """
    import mmap

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        span = next((value for number, wire, value in fields(buf, 0, len(buf)) if number == MODEL_GRAPH and wire == 2),
                    None)
        graph = _read_graph(buf, span) if span is not None else _Graph()
    return GraphIO(graph.inputs, {output: node.op_type for node in graph.node for output in node.output})


def inspect_model_file(path: Path) -> GraphFacts:
    """Size on disk (external data included), opset, producer, and embedding vocabulary sizes."""
    import mmap

    files = [DataFile(str(path), path.stat().st_size)]
    if files[0].bytes == 0:
        raise CompressError(f"{path} is not an ONNX model (the file is empty)")
    opset: int | None = None
    producer: str | None = None
    graph: _Graph | None = None
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, value in fields(buf, 0, len(buf)):
                if number == MODEL_GRAPH and wire == 2:
                    graph = _read_graph(buf, value)
                elif number == _MODEL_PRODUCER and wire == 2:
                    producer = text_of(buf, value) or None
                elif number == _MODEL_OPSET and wire == 2:
                    entry = {n: v for n, w, v in fields(buf, *value)}
                    domain = text_of(buf, entry[_OPSET_DOMAIN]) if _OPSET_DOMAIN in entry else ""
                    if domain in ("", "ai.onnx") and isinstance(entry.get(_OPSET_VERSION), int):
                        opset = entry[_OPSET_VERSION]
    except (WireError, IndexError) as exc:
        raise CompressError(f"{path} is not an ONNX model (unreadable protobuf: {exc})") from None
    except OSError as exc:
        raise CompressError(f"cannot read {path}: {exc}") from None
    if graph is None or opset is None:
        raise CompressError(f"{path} is not an ONNX model (no graph or no opset in it)")
    for location in sorted(graph.external_locations):
        data_path = path.parent / location
        if not data_path.is_file():
            raise CompressError(f"{path} references external data {location} that is not beside it ({data_path})")
        files.append(DataFile(str(data_path), data_path.stat().st_size))
    return GraphFacts(files, opset, producer, id_vocab_sizes(graph, graph.integer_inputs))


