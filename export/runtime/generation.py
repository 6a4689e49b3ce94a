"""Greedy text generation with an ONNX causal LM and its KV cache, torch-free.

This runs on the device: onnxruntime, numpy and (optionally) tokenizers only. It drives a model
exported the way optimum exports ``text-generation-with-past``:

- inputs ``input_ids``, ``attention_mask``, ``position_ids`` (when the export has it) and
  ``past_key_values.{i}.key`` / ``past_key_values.{i}.value``, and ``use_cache_branch`` in the
  older merged decoders;
- outputs ``logits`` and ``present.{i}.key`` / ``present.{i}.value``, fed back as the next step's
  past.

Shapes and dtypes come from the session (heads, head size, float32 or float16 cache), so Llama-style
(grouped-query attention), Qwen2 and GPT-2 exports, fp32, fp16 and int4/int8-weight ones all work.
The first step (prefill) takes the whole prompt with an empty cache; each later step one token.
Decoding is greedy (argmax), batch 1: the same tokens ``transformers`` ``generate`` gives with
``do_sample=False``.

Graphs whose attention is ONNX Runtime's ``GroupQueryAttention`` (the fused export) keep their cache
in place: one buffer per past input, sized once for prompt and answer, is bound as both the past
input and the present output (I/O binding), so no step copies the cache. Other graphs return a new,
longer cache each step, fed back as the next step's past.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.base.errors import CompressError
from export.runtime.onnx_file import GraphIO, WireError, read_graph_io
from export.runtime.session import open_session
from export.runtime.inputs import numpy_dtype

if TYPE_CHECKING:
    from collections.abc import Callable

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT_PREFIX = "present."


def shares_cache_buffers(graph: GraphIO) -> bool:
    """Whether every ``present.*`` output of a decoder comes straight from a ``GroupQueryAttention``,
    which then writes into the past buffer in place (not through a Cast, as where an fp16 graph
    keeps fp32 inputs and outputs)."""
    presents = [op for name, op in graph.producers.items() if name.startswith(_PRESENT_PREFIX)]
    return bool(presents) and all(op == "GroupQueryAttention" for op in presents)


def is_generation_model(path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX file at ``path`` is a decoder with a KV cache (has ``past_key_values.*`` inputs).

    Unreadable or missing files are not generation models (the caller's own loading reports why).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        return any(_PAST.match(name) for name in read_graph_io(path).inputs)
    except (WireError, IndexError, OSError, ValueError):
        return False


@dataclass
class GenerationOutput:
    """The tokens one greedy generation produced and how long it took."""

    tokens: list[int]  # the new tokens only (the eos token included when it ended the generation)
    ttft_s: float  # time to first token: the prefill run and its argmax
    step_s: list[float] = field(default_factory=list)  # each later token's decode step, in order

    @property
    def total_s(self) -> float:
        return self.ttft_s + sum(self.step_s)


@dataclass
class _Cache:
    """One past input and the present output that feeds it."""

    input_name: str
    output_name: str
    dtype: np.dtype
    shape: list[int | None]  # None: the past-sequence axis (and batch, set to 1)


class OnnxGenerator:
    """A session over an exported decoder with its KV cache, decoding greedily.

    ``providers`` defaults to the CPU; ``intra_op_threads`` None leaves onnxruntime's default;
    ``spinning`` False stops intra-op threads spinning when a run returns (fairer when two sessions
    share a CPU). The session is opened with export/bench.py's helper (quiet onnxruntime, GPU libraries
    preloaded, provider fall-back recorded in ``providers_unavailable``).
    """

    def __init__(self, model_path: str | os.PathLike[str], *, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                 spinning: bool = True) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise CompressError(f"model not found: {self.path}")
        if not is_generation_model(self.path):
            raise CompressError(f"{self.path} is not a generation model (no past_key_values.* inputs); export it with "
                                "task text-generation-with-past")
        self.providers_requested = list(providers or ["CPUExecutionProvider"])
        self.session, self.load_s, self.providers_unavailable = open_session(
            self.path, self.providers_requested, intra_op_threads, inter_op_threads, spinning)
        self.intra_op_threads = intra_op_threads
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs:
            raise CompressError(f"{self.path}: expected an input_ids input and a logits output "
                                f"(found inputs {', '.join(inputs)})")
        self._ids_dtype = numpy_dtype(inputs["input_ids"].type)
        self._mask_dtype = numpy_dtype(inputs["attention_mask"].type) if "attention_mask" in inputs else None
        self._pos_dtype = numpy_dtype(inputs["position_ids"].type) if "position_ids" in inputs else None
        self._branch = "use_cache_branch" in inputs
        self._caches: list[_Cache] = []
        for name, arg in inputs.items():
            match = _PAST.match(name)
            if not match:
                continue
            present = f"{_PRESENT_PREFIX}{match.group(1)}.{match.group(2)}"
            if present not in outputs:
                raise CompressError(f"{self.path}: input {name} has no matching output {present}")
            # Axis 0 is the batch (1 here), axis 2 the past sequence (0 at prefill); the rest is fixed
            # by the model (heads, head size) and read from the session.
            shape = [d if isinstance(d, int) else None for d in arg.shape]
            if len(shape) != 4 or shape[1] is None or shape[3] is None:
                raise CompressError(f"{self.path}: cannot read the cache layout of {name} (shape {arg.shape})")
            self._caches.append(_Cache(name, present, numpy_dtype(arg.type), shape))
        self._output_names = ["logits"] + [c.output_name for c in self._caches]
        known = {"input_ids", "attention_mask", "position_ids", "use_cache_branch"} | {c.input_name for c in self._caches}
        unknown = [name for name in inputs if name not in known]
        if unknown:
            raise CompressError(f"{self.path}: inputs this generator cannot feed: {', '.join(unknown)}")
        self.in_place_cache = shares_cache_buffers(read_graph_io(self.path))

    @property
    def providers_used(self) -> list[str]:
        """What the session really runs on (a CUDA request without CUDA runs on the CPU)."""
        return list(self.session.get_providers())

    @property
    def num_layers(self) -> int:
        return len(self._caches) // 2

    def _feeds(self, ids: np.ndarray, start: int, past: list[np.ndarray]) -> dict[str, Any]:
        length = ids.shape[1]
        feeds: dict[str, Any] = {"input_ids": ids.astype(self._ids_dtype, copy=False)}
        if self._mask_dtype is not None:
            feeds["attention_mask"] = np.ones((1, start + length), dtype=self._mask_dtype)
        if self._pos_dtype is not None:
            feeds["position_ids"] = np.arange(start, start + length, dtype=self._pos_dtype)[None, :]
        if self._branch:
            feeds["use_cache_branch"] = np.array([start > 0])
        for cache, value in zip(self._caches, past):
            feeds[cache.input_name] = value
        return feeds

    def _empty_past(self) -> list[np.ndarray]:
        return [np.zeros((1, c.shape[1], 0, c.shape[3]), dtype=c.dtype) for c in self._caches]

    def _copying_step(self) -> Callable[[np.ndarray, int], np.ndarray]:
        """A step that feeds the last present back as the next past (the graph returns a longer cache)."""
        run, names = self.session.run, self._output_names
        past = self._empty_past()

        def step(ids: np.ndarray, position: int) -> np.ndarray:
            nonlocal past
            logits, *past = run(names, self._feeds(ids, position, past))
            return logits

        return step

    def _in_place_step(self, length: int) -> Callable[[np.ndarray, int], np.ndarray]:
        """A step over cache buffers of ``length`` positions bound as both past and present: the
        attention kernel appends each step's keys and values where they belong, nothing is copied.
        Decode steps also write their logits into one array bound once and read an attention mask
        sliced from one array: a step costs the session run and little else."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"  # the cache stays there
        for cache in self._caches:
            empty = np.zeros((1, cache.shape[1], length, cache.shape[3]), cache.dtype)
            buffer = ort.OrtValue.ortvalue_from_numpy(empty, device, 0)
            binding.bind_ortvalue_input(cache.input_name, buffer)
            binding.bind_ortvalue_output(cache.output_name, buffer)
        mask = np.ones((1, length), dtype=self._mask_dtype or np.int64)
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        vocab = logits.shape[-1]
        token_logits = np.zeros((1, 1, vocab), dtype=numpy_dtype(logits.type)) if isinstance(vocab, int) else None
        logits_index = len(self._caches)  # outputs come back in binding order

        def step(ids: np.ndarray, position: int) -> np.ndarray:
            binding.bind_cpu_input("input_ids", ids.astype(self._ids_dtype, copy=False))
            if self._mask_dtype is not None:
                binding.bind_cpu_input("attention_mask", mask[:, :position + ids.shape[1]])
            if ids.shape[1] == 1 and token_logits is not None:
                binding.bind_output("logits", "cpu", 0, token_logits.dtype, list(token_logits.shape),
                                    token_logits.ctypes.data)
                self.session.run_with_iobinding(binding)
                return token_logits
            binding.bind_output("logits")  # the prompt's: as long as the prompt, allocated by the session
            self.session.run_with_iobinding(binding)
            return binding.get_outputs()[logits_index].numpy()

        return step

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, *,
                 eos_token_id: int | list[int] | None = None) -> GenerationOutput:
        """Greedy-decode up to ``max_new_tokens`` after the prompt ``input_ids`` (shape ``(1, n)``).

        Stops early after an ``eos_token_id`` token (kept in ``tokens``, as transformers does);
        None generates exactly ``max_new_tokens``. Timing covers ``session.run`` plus the argmax.
        """
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or ids.dtype.kind not in "iu":
            raise CompressError(f"input_ids must be integer token ids of shape (1, n) with n >= 1, got "
                                f"{ids.dtype}{list(ids.shape)}")
        if max_new_tokens < 1:
            raise CompressError("max_new_tokens must be at least 1")
        stop = set() if eos_token_id is None else (
            {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id))
        step = self._in_place_step(ids.shape[1] + max_new_tokens) if self.in_place_cache else self._copying_step()
        clock = time.perf_counter
        tokens: list[int] = []
        steps: list[float] = []
        position = 0
        ttft = 0.0
        try:
            while True:
                start = clock()
                logits = step(ids, position)
                token = int(np.argmax(logits[0, -1]))
                elapsed = clock() - start
                if tokens:
                    steps.append(elapsed)
                else:
                    ttft = elapsed
                tokens.append(token)
                position += ids.shape[1]
                if token in stop or len(tokens) >= max_new_tokens:
                    break
                ids = np.array([[token]], dtype=self._ids_dtype)
        except CompressError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompressError(f"onnxruntime failed while generating with {self.path} at position {position}: "
                                f"{first}") from None
        return GenerationOutput(tokens=tokens, ttft_s=ttft, step_s=steps)


def load_tokenizer(model_dir: str | os.PathLike[str]) -> Any | None:
    """The ``tokenizers`` tokenizer in ``model_dir/tokenizer.json``; None when there is none."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise CompressError(f"cannot read tokenizer {path}: {exc}") from None
