"""``--student auto`` for encoders: the profile's latency budget picks the student's shape.

Candidates are the teacher's depths (fewer layers, evenly spaced as ``layers=N`` takes them) times
widths (all heads, three quarters, half; hidden and FFN shrink with them, the kept heads and
neurons chosen by importance as :mod:`compress.encoder.width` does) times the precisions the
profile can release. Each gets an estimated p95 on the target from
:mod:`export.runtime.latency_model`, calibrated by timing four candidates' ONNX graphs (random
weights: latency does not depend on them) on this host with the profile's runtime settings.

The student is the most capable candidate (most transformer-block parameters, then the deeper)
whose estimate in some precision fits the profile's p95 budget with a margin; that precision is
only a forecast: after distillation the release stage measures each precision and ships the
fastest that keeps the quality. The whole search is kept in the distill stage's folder, so a
resumed run trains the student it chose the first time.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.files import atomic_write_json
from export.runtime.latency_model import CalibrationPoint, EncoderShape, LatencyModel, fit_latency_model, transfer_to

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

SEARCH_FILE = "student_search.json"
# The estimate must leave this share of the budget free: the latency model's error on this host was
# 11% at the median and up to 36% over 30 candidates (benchmarks/student_search.py), and the
# target's own jitter comes on top.
MARGIN = 0.8
CALIBRATION_RUNS = 60
CALIBRATION_WARMUP = 10
WIDTH_FRACTIONS = (1.0, 0.75, 0.5)


@dataclass
class SearchCandidate:
    """One student shape, its size and its estimated p95 on the target per precision."""

    spec: str
    shape: EncoderShape
    p95_ms: dict[str, float]  # on the target (an estimate unless the search's basis says measured)
    host_p95_ms: dict[str, float] = field(default_factory=dict)  # on this host, to check against the release's bench
    fits: bool = False
    precision: str | None = None  # the cheapest precision that fits, when one does
    size_mb: dict[str, float] = field(default_factory=dict)  # the release file's estimated MiB per precision

    @property
    def block_parameters(self) -> int:
        return self.shape.block_parameters


@dataclass
class StudentSearch:
    """What the search considered, what it chose and why (``student_search.json``)."""

    profile: str
    teacher: str
    budget_p95_ms: float | None
    margin: float
    basis: str
    candidates: list[SearchCandidate]
    chosen: str
    why: str
    latency_model: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self, path: Path) -> None:
        atomic_write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> StudentSearch:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["candidates"] = [SearchCandidate(**{**c, "shape": EncoderShape(**c["shape"])})
                              for c in data["candidates"]]
        return cls(**data)

    def table(self) -> list[str]:
        """The candidate table, one line per shape, the chosen one marked."""
        precisions = list(self.candidates[0].p95_ms) if self.candidates else []
        head = f"  {'student':<40} {'block params':>12} " + " ".join(f"{p + ' p95':>17}" for p in precisions) + "  fits"
        lines = [head]
        for c in self.candidates:
            mark = "*" if c.spec == self.chosen else " "
            cells = " ".join(f"{c.p95_ms[p]:>14.2f} ms" for p in precisions)
            lines.append(f"{mark} {c.spec:<40} {c.block_parameters / 1e6:>11.1f}M {cells}  "
                         f"{'yes (' + str(c.precision) + ')' if c.fits else 'no'}")
        return lines


def candidate_shapes(teacher_config: Any) -> list[tuple[str, EncoderShape]]:
    """(spec, shape) for every depth below the teacher's times three widths, deepest and widest first."""
    layers = int(teacher_config.num_hidden_layers)
    hidden, heads = int(teacher_config.hidden_size), int(teacher_config.num_attention_heads)
    ffn, vocab = int(teacher_config.intermediate_size), int(teacher_config.vocab_size)
    head_dim = hidden // heads
    depths = sorted({d for d in (1, 2, 3, 4, 6, 8, layers // 2, layers - 1) if 1 <= d < layers}, reverse=True)
    out: list[tuple[str, EncoderShape]] = []
    for depth in depths:
        for kept_heads in sorted({max(1, round(heads * f)) for f in WIDTH_FRACTIONS}, reverse=True):
            width = kept_heads * head_dim
            neurons = ffn * kept_heads // heads
            spec = f"layers={depth}" if kept_heads == heads else \
                f"layers={depth},hidden={width},heads={kept_heads},ffn={neurons}"
            out.append((spec, EncoderShape(depth, width, kept_heads, neurons, vocab)))
    return out


def search_precisions(profile: Profile) -> list[str]:
    """The precisions a release for ``profile`` (a CPU target) can take: fp32 always, and int8 (timed
    as int8-dynamic) when the profile quantizes to int8."""
    return ["fp32", "int8-dynamic"] if profile.precision.startswith("int8") else ["fp32"]


# Bytes a parameter takes in each release precision's file (int8-dynamic: weights and the word table in
# int8, with their scales; measured 1.012 for a 20.9M-parameter MiniLM student, 3.98 in fp32).
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "int8-dynamic": 1.02, "int8-static": 1.02}
# The size estimate must leave this share of the size budget free (graph, scales, tokenizer-independent).
SIZE_MARGIN = 0.97


def estimated_size_mb(shape: EncoderShape, precision: str) -> float:
    """The release file's size in MiB for ``shape`` in ``precision``."""
    return shape.parameters * BYTES_PER_PARAMETER.get(precision, 4.0) / 2**20


def choose(candidates: list[SearchCandidate], budget_ms: float | None, margin: float,
           size_budget_mb: float | None = None) -> tuple[SearchCandidate, str]:
    """Mark which candidates fit the p95 budget (and the size budget, when there is one); return the
    most capable that does, and why it won."""
    if budget_ms is None:
        raise ValueError("no p95 budget to search against")
    limit = budget_ms * margin
    for candidate in candidates:
        fitting = [p for p, ms in candidate.p95_ms.items() if ms <= limit
                   and (size_budget_mb is None or candidate.size_mb[p] <= size_budget_mb * SIZE_MARGIN)]
        candidate.fits = bool(fitting)
        candidate.precision = min(fitting, key=lambda p: candidate.p95_ms[p]) if fitting else None
    fitting = [c for c in candidates if c.fits]
    if fitting:
        best = max(fitting, key=lambda c: (c.block_parameters, c.shape.layers))
        ms = best.p95_ms[best.precision]  # type: ignore[index]
        size = "" if size_budget_mb is None else \
            f" and {SIZE_MARGIN:.0%} of {size_budget_mb:g} MiB: {best.size_mb[best.precision]:.1f} MiB"  # type: ignore[index]
        return best, (f"the largest of {len(fitting)} candidates whose estimated p95 fits {margin:.0%} of the "
                      f"{budget_ms:g} ms budget{' and whose file fits the size budget' if size else ''}: "
                      f"{ms:.2f} ms in {best.precision}{size}")
    cheapest = min(candidates, key=lambda c: min(c.p95_ms.values()))
    size = "" if size_budget_mb is None else f" and {SIZE_MARGIN:.0%} of the {size_budget_mb:g} MiB size budget"
    return cheapest, (f"no candidate fits {margin:.0%} of the {budget_ms:g} ms p95 budget{size}; the cheapest, "
                      f"{min(cheapest.p95_ms.values()):.2f} ms, will miss it")


def calibration_shapes(shapes: list[EncoderShape]) -> list[EncoderShape]:
    """Four shapes spanning the candidates: the cheapest, the dearest, the deepest-narrowest and the
    shallowest-widest (so depth and width, FLOPs and element-wise work, vary apart)."""
    picks = [min(shapes, key=lambda s: s.block_parameters), max(shapes, key=lambda s: s.block_parameters),
             max(shapes, key=lambda s: (s.layers, -s.hidden)), max(shapes, key=lambda s: (s.hidden, -s.layers))]
    return list(dict.fromkeys(picks))


def export_candidate_graph(teacher_config: Any, shape: EncoderShape, path: Path) -> None:
    """An ONNX graph of a random-weight encoder of ``shape``, mean-pooled and normalised like the release."""
    import copy

    import torch
    from transformers import AutoModel

    from export.base.tasks import Pooling
    from export.torch_model import pool

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers, config.hidden_size = shape.layers, shape.hidden
    config.num_attention_heads, config.intermediate_size = shape.heads, shape.ffn
    model = AutoModel.from_config(config).eval()
    with_types = int(getattr(config, "type_vocab_size", 0) or 0) > 0

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *types: torch.Tensor) -> torch.Tensor:
            kwargs = {"token_type_ids": types[0]} if types else {}
            states = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            return pool(states, attention_mask, Pooling())

    ids = torch.ones(1, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    args = (ids, ids) + ((torch.zeros_like(ids),) if with_types else ())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(), args, str(path), input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names}, opset_version=17,
                          dynamo=False)


def calibrate(teacher_config: Any, shapes: list[EncoderShape], precisions: list[str], profile: Profile,
              log: Any = None) -> list[CalibrationPoint]:
    """Time each shape's ONNX graph in each precision on this host, with ``profile``'s runtime settings.

    All graphs run interleaved in one process (A, B, C, ..., A, B, C, ...), as the release stage
    times its candidates: a burst of load from elsewhere on a shared machine hits every shape
    alike instead of bending the fitted line.
    """
    from export.quantize import quantize_file
    from export.runtime.bench import bench_interleaved

    batch, sequence = profile.workload.batch_size, profile.workload.sequence_length
    graphs: list[tuple[EncoderShape, str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="compress-latency-") as scratch:
        teacher_config.to_json_file(str(Path(scratch) / "config.json"))  # the quantizer looks for one beside the graph
        for index, shape in enumerate(shapes):
            fp32 = Path(scratch) / f"shape{index}.onnx"
            export_candidate_graph(teacher_config, shape, fp32)
            for precision in precisions:
                model = fp32
                if precision != "fp32":
                    model = Path(scratch) / f"shape{index}.{precision}.onnx"
                    quantize_file(fp32, model, precision, profile.quantization_preset, [])
                graphs.append((shape, precision, model))
        reports = bench_interleaved([model for _, _, model in graphs], profile, runs=CALIBRATION_RUNS,
                                    warmup=CALIBRATION_WARMUP, progress=False)
    points: list[CalibrationPoint] = []
    for (shape, precision, _), report in zip(graphs, reports):
        points.append(CalibrationPoint(shape, precision, shape.gflop(batch, sequence), shape.melements(batch, sequence),
                                       report.latency.p50_ms, report.latency.p95_ms))
        if log:
            log(f"timed {shape.describe()} {precision}: p50 {report.latency.p50_ms:.2f} ms, "
                f"p95 {report.latency.p95_ms:.2f} ms")
    return points


def searches_student(profile: Profile | None) -> bool:
    """Whether ``--student auto`` searches for ``profile`` (a CPU target with a p95 budget) rather
    than taking the student the profile names."""
    return profile is not None and profile.hardware.device == "cpu" and profile.budgets.latency_ms.p95 is not None


def searchable_teacher(teacher_config: Any) -> bool:
    """A BERT-style config the candidate shapes can be written in."""
    return all(hasattr(teacher_config, key) for key in
               ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"))


def host_latency_model(teacher_config: Any, profile: Profile, log: Any = None) -> LatencyModel | None:
    """The latency model for ``profile``'s target, calibrated on candidate graphs of ``teacher_config``
    timed here; None when this host cannot stand in for the target (a GPU, or ``any`` machine)."""
    from export.runtime.gate import match_hardware
    from export.runtime.host import cpu_mhz, detect_host
    from export.runtime.session import bench_threads

    host = detect_host()
    threads, _ = bench_threads(None, profile, host.usable_cores)
    on_target = match_hardware(profile, host, ["CPUExecutionProvider"]).matched
    transfer = transfer_to(profile, host, threads or host.usable_cores, on_target, cpu_mhz())
    if transfer is None:
        return None
    shapes = [shape for _, shape in candidate_shapes(teacher_config)]
    points = calibrate(teacher_config, calibration_shapes(shapes), search_precisions(profile), profile, log)
    return fit_latency_model(points, transfer, batch=profile.workload.batch_size,
                             sequence=profile.workload.sequence_length,
                             bandwidth_gbs=profile.hardware.memory_bandwidth_gbs)


def estimate_candidates(teacher_config: Any, model: LatencyModel) -> list[SearchCandidate]:
    """Every candidate shape with its estimated p95 on the target and on this host, per precision."""
    return [SearchCandidate(spec, shape, {p: round(model.estimate(shape, p).p95_ms, 3) for p in model.fits},
                            {p: round(model.host_p95_ms(shape, p), 3) for p in model.fits},
                            size_mb={p: round(estimated_size_mb(shape, p), 2) for p in model.fits})
            for spec, shape in candidate_shapes(teacher_config)]


def search_student(teacher_config: Any, teacher_name: str, profile: Profile, log: Any = None
                   ) -> StudentSearch | None:
    """Search the student for ``profile``; None when this host cannot estimate its target or the
    profile sets no p95 budget."""
    budget = profile.budgets.latency_ms.p95
    if budget is None:
        return None
    started = time.perf_counter()
    model = host_latency_model(teacher_config, profile, log)
    if model is None:
        return None
    candidates = estimate_candidates(teacher_config, model)
    best, why = choose(candidates, budget, MARGIN, profile.budgets.model_size_mb)
    return StudentSearch(profile=profile.name, teacher=teacher_name, budget_p95_ms=budget, margin=MARGIN,
                         basis=model.transfer.basis, candidates=candidates, chosen=best.spec, why=why,
                         latency_model=model.to_dict(), seconds=round(time.perf_counter() - started, 1))
