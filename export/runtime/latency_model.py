"""How long an encoder of a given shape takes on a profile's target, before it is trained.

The cost of one request is counted from the shape (a BERT-style encoder at the profile's batch and
sequence length): the FLOPs of its matrix products and the bytes of weights it reads. A line
``p50 = overhead + a * GFLOP + b * activation elements`` per precision is fitted to a few candidate
ONNX graphs timed on this host, the calibration, and their p95/p50 ratio carries it to a p95; the
bytes give a floor (weights read once per request at the target's memory bandwidth).

On a host that matches the profile, the calibration *is* the target (scaled only when the host has
fewer threads than the target uses). On any other host the fitted throughput is scaled by the ratio
of the target's peak FP32 rate to this host's, and every figure says it is an estimate: a
Cortex-A76 does not run ONNX Runtime's kernels at an x86 core's efficiency, so the gate never
treats an estimate as a measurement.

Torch-free: shapes and timings in, estimates out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.runtime.host import HostInfo
    from export.runtime.profiles import Profile

# Bytes per weight as the graph stores it.
WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8-dynamic": 1.0, "int8-static": 1.0}
# FP32 FLOP per cycle per core of the ISAs the profiles name: two 256-bit FMA pipes (AVX2, and
# AVX-512 executed as two halves or on one 512-bit port), two 128-bit NEON pipes (Cortex-A76/A78).
_FLOP_PER_CYCLE = (("avx512f", 32.0), ("avx2", 32.0), ("asimd", 16.0))


@dataclass(frozen=True)
class EncoderShape:
    """A BERT-style encoder's shape: what its cost depends on."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522

    def describe(self) -> str:
        return f"{self.layers} layers x {self.hidden} ({self.heads} heads, ffn {self.ffn})"

    @property
    def block_parameters(self) -> int:
        """Parameters of the transformer blocks (what compute scales with; embeddings are a lookup)."""
        h, f = self.hidden, self.ffn
        per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # Q, K, V, O; FFN in and out; two LayerNorms
        return self.layers * per_layer

    @property
    def parameters(self) -> int:
        """Every parameter: the blocks, the word, position (512) and token-type tables and their LayerNorm."""
        return self.block_parameters + (self.vocab + 512 + 2 + 2) * self.hidden

    def gflop(self, batch: int, sequence: int) -> float:
        """GFLOP of one forward pass: the matrix products (2 FLOP a multiply-add), attention included."""
        h, f, tokens = self.hidden, self.ffn, batch * sequence
        dense = 2 * tokens * (4 * h * h + 2 * h * f)
        attention = 2 * 2 * batch * sequence * sequence * h  # scores and the weighted sum
        return self.layers * (dense + attention) / 1e9

    def melements(self, batch: int, sequence: int) -> float:
        """Millions of activation elements the element-wise ops touch: GELU over the FFN, LayerNorms and
        residual adds over the hidden states, the softmax over every head's scores."""
        tokens = batch * sequence
        per_layer = tokens * (self.ffn + 8 * self.hidden) + batch * self.heads * sequence * sequence
        return self.layers * per_layer / 1e6

    def weight_mb(self, precision: str) -> float:
        """MB of block weights one request reads, at ``precision``."""
        return self.block_parameters * WEIGHT_BYTES.get(precision, 4.0) / 1e6


@dataclass(frozen=True)
class CalibrationPoint:
    """One candidate graph timed on this host."""

    shape: EncoderShape
    precision: str
    gflop: float
    melements: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class PrecisionFit:
    """``p50_ms = overhead_ms + ms_per_gflop * GFLOP + ms_per_melement * M elements`` for one precision,
    on the calibration host: the matrix products, and the element-wise work between them (GELU,
    LayerNorm, softmax), which is bound by memory traffic rather than arithmetic. The median is
    fitted (a p95 of a few dozen runs is mostly noise) and ``tail`` (the calibration runs' median
    p95 / p50) turns it into a p95."""

    precision: str
    overhead_ms: float
    ms_per_gflop: float
    ms_per_melement: float
    tail: float = 1.0

    def variable_ms(self, gflop: float, melements: float) -> float:
        return self.ms_per_gflop * gflop + self.ms_per_melement * melements

    def host_p50_ms(self, gflop: float, melements: float) -> float:
        return self.overhead_ms + self.variable_ms(gflop, melements)


def fit_precision(points: list[CalibrationPoint]) -> PrecisionFit:
    """Non-negative least squares through the points of one precision.

    Every subset of the terms (overhead, FLOPs, element-wise work) is fitted and the best fit whose
    coefficients are all non-negative kept: a cost cannot be negative, and with four noisy points
    an unconstrained fit happily trades one term against another.
    """
    import itertools

    import numpy as np

    if len({p.precision for p in points}) != 1 or len({p.gflop for p in points}) < 2:
        raise ValueError("a fit needs two or more shapes of different cost in one precision")
    columns = {"overhead": [1.0] * len(points), "gflop": [p.gflop for p in points],
               "melements": [p.melements for p in points]}
    y = np.array([p.p50_ms for p in points])
    best: tuple[float, dict[str, float]] | None = None
    for size in range(1, len(columns) + 1):
        for terms in itertools.combinations(columns, size):
            if len(terms) > len(points) or terms == ("overhead",):
                continue
            a = np.array([columns[t] for t in terms]).T
            solution = np.linalg.lstsq(a, y, rcond=None)[0]
            if (solution < 0).any():
                continue
            residual = float(np.sum((a @ solution - y) ** 2))
            if best is None or residual < best[0] - 1e-12:
                best = (residual, dict(zip(terms, solution.tolist())))
    assert best is not None  # a single cost term through positive timings always fits
    coefficients = best[1]
    tail = float(np.median([p.p95_ms / p.p50_ms for p in points]))
    return PrecisionFit(points[0].precision, coefficients.get("overhead", 0.0), coefficients.get("gflop", 0.0),
                        coefficients.get("melements", 0.0), tail)


def host_peak_gflops(host: HostInfo, threads: int, mhz: float | None) -> float | None:
    """Peak FP32 GFLOP/s of ``threads`` cores of this host, from its ISA and clock (None when unknown)."""
    if not mhz:
        return None
    flags = set(host.cpu_flags)
    per_cycle = next((value for flag, value in _FLOP_PER_CYCLE if flag in flags), None)
    return None if per_cycle is None else threads * mhz / 1000.0 * per_cycle


@dataclass(frozen=True)
class Transfer:
    """How host timings become target estimates: a factor on the compute time, and what it rests on."""

    compute_scale: float  # target time of the FLOPs / host time of the FLOPs
    measured: bool  # True: the host is the target, at the target's thread count
    basis: str  # one line, printed beside every estimate


def transfer_to(profile: Profile, host: HostInfo, host_threads: int, on_target: bool,
                mhz: float | None) -> Transfer | None:
    """The host-to-target scaling for ``profile``, or None when this host cannot stand in for it.

    None for GPU targets (a GPU at batch 1 is bound by kernel launches and copies that no CPU timing
    shows, so nothing here estimates it) and for profiles of ``any`` machine.
    """
    if profile.hardware.device != "cpu":  # a GPU, or "any" machine: no target to estimate
        return None
    cpu = profile.hardware.cpu
    target_threads = profile.runtime.intra_op_threads or (cpu.cores if cpu else host_threads)
    if on_target:
        if target_threads == host_threads:
            return Transfer(1.0, True, f"measured on this host ({host_threads} threads), which matches {profile.name}")
        return Transfer(host_threads / target_threads, False,
                        f"estimate: timed on this host, which matches {profile.name}, with {host_threads} threads, "
                        f"scaled to the target's {target_threads}")
    peak = host_peak_gflops(host, host_threads, mhz)
    target_peak = cpu.fp32_gflops if cpu else None
    if peak is None or target_peak is None:
        return None
    return Transfer(peak / target_peak, False,
                    f"estimate: timed on {host.cpu_model} ({host_threads} threads, about {peak:.0f} GFLOP/s peak), "
                    f"scaled to {profile.name}'s {target_peak:.0f} GFLOP/s")


@dataclass(frozen=True)
class Estimate:
    """A shape's estimated p50 and p95 on the target in one precision."""

    precision: str
    p50_ms: float
    p95_ms: float
    bound: str  # "compute" or "memory"


@dataclass
class LatencyModel:
    """Per-precision fits from this host and the transfer to one profile's target."""

    fits: dict[str, PrecisionFit]
    transfer: Transfer
    batch: int
    sequence: int
    bandwidth_gbs: float | None = None  # the target's, for the memory floor
    points: list[CalibrationPoint] = field(default_factory=list)

    def estimate(self, shape: EncoderShape, precision: str) -> Estimate:
        fit = self.fits[precision]
        variable = fit.variable_ms(shape.gflop(self.batch, self.sequence), shape.melements(self.batch, self.sequence))
        p50, bound = fit.overhead_ms + variable * self.transfer.compute_scale, "compute"
        if self.bandwidth_gbs:
            memory = shape.weight_mb(precision) / self.bandwidth_gbs  # MB / (GB/s) = ms
            if memory > p50:
                p50, bound = memory, "memory"
        return Estimate(precision, p50, p50 * fit.tail, bound)

    def host_p95_ms(self, shape: EncoderShape, precision: str) -> float:
        """The fitted p95 of ``shape`` on this host, before any transfer: what the release stage's
        interleaved bench measures here."""
        fit = self.fits[precision]
        return fit.host_p50_ms(shape.gflop(self.batch, self.sequence), shape.melements(self.batch, self.sequence)) \
            * fit.tail

    def calibration_error(self) -> float:
        """Largest relative error of the fitted p50 at its own calibration points (on this host)."""
        errors = [abs(self.fits[p.precision].host_p50_ms(p.gflop, p.melements) - p.p50_ms) / p.p50_ms
                  for p in self.points]
        return max(errors) if errors else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"fits": {k: asdict(v) for k, v in self.fits.items()}, "transfer": asdict(self.transfer),
                "batch": self.batch, "sequence": self.sequence, "bandwidth_gbs": self.bandwidth_gbs,
                "points": [asdict(p) for p in self.points], "calibration_error": self.calibration_error()}


def fit_latency_model(points: list[CalibrationPoint], transfer: Transfer, *, batch: int, sequence: int,
                      bandwidth_gbs: float | None = None) -> LatencyModel:
    """A model from timed calibration points (two or more shapes per precision)."""
    by_precision: dict[str, list[CalibrationPoint]] = {}
    for point in points:
        by_precision.setdefault(point.precision, []).append(point)
    fits = {precision: fit_precision(group) for precision, group in by_precision.items()}
    # On the host itself the memory floor is already in the timings; it is the target's that may differ.
    floor = None if transfer.measured else bandwidth_gbs
    return LatencyModel(fits, transfer, batch, sequence, floor, list(points))
