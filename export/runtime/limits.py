"""How far a measurement may be pushed: bounds checked before any work, with the option's name.

A million threads, a sequence of a hundred million tokens or a billion runs are typos, not
workloads: they would run for hours or exhaust memory before failing.
"""

from __future__ import annotations

from export.base.errors import CompressError

MAX_RUNS = 100_000
MAX_BATCH = 4_096
MAX_SEQUENCE = 131_072
MAX_TOKENS_PER_CALL = 1 << 22  # batch x sequence length of one synthetic feed
MAX_THREADS = 1_024
MAX_NEW_TOKENS = 32_768


def check_count(flag: str, value: int | None, low: int, high: int) -> None:
    """CompressError naming ``flag`` unless ``value`` is None or within ``[low, high]``."""
    if value is not None and not low <= value <= high:
        raise CompressError(f"{flag} {value} is outside {low}..{high:,}")


def check_bench_counts(*, runs: int, warmup: int, threads: int | None, batch_size: int | None = None,
                       sequence_length: int | None = None, prompt_length: int | None = None,
                       new_tokens: int | None = None) -> None:
    """Every count a bench takes, against its bounds."""
    check_count("--runs", runs, 1, MAX_RUNS)
    check_count("--warmup", warmup, 0, MAX_RUNS)
    check_count("--threads", threads, 1, MAX_THREADS)
    check_count("--batch-size", batch_size, 1, MAX_BATCH)
    check_count("--sequence-length", sequence_length, 1, MAX_SEQUENCE)
    check_count("--prompt-length", prompt_length, 1, MAX_SEQUENCE)
    check_count("--new-tokens", new_tokens, 1, MAX_NEW_TOKENS)
    if batch_size is not None and sequence_length is not None and batch_size * sequence_length > MAX_TOKENS_PER_CALL:
        raise CompressError(f"--batch-size {batch_size} x --sequence-length {sequence_length} is more than "
                            f"{MAX_TOKENS_PER_CALL:,} tokens in one call")
