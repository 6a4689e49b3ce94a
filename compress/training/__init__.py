"""Training, the same for every family: the loop, its batches, checkpoints, schedule, device and progress.

A family's trainer (:mod:`compress.encoder.trainer` for encoders, :mod:`compress.lm.trainer` for
causal LMs) supplies one optimizer step and what it measures; :func:`compress.training.loop.run_loop`
runs it.
"""
