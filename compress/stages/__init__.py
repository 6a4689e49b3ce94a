"""The chain's stages, one module each; the chain (:mod:`compress.chain`) calls them in order.

=========  ==========================================================================  =========
stage      what it makes in ``RUN_DIR/<stage>/``                                        module
=========  ==========================================================================  =========
distill    the student (HF folder), held-out split, loss history                        distill
prune      a pruned copy of the student (encoders, when asked)                          prune
export     the student as ONNX, parity-checked against PyTorch                          export
teacher    the teacher as ONNX: the baseline every ratio is against                     export
quantize   the release precision                                                        quantize
release    every model that could ship, measured side by side; the one chosen           release
bench      the release timed against the teacher, runs interleaved                      bench
gate       the verdict against the profile's budgets (gate.json, junit.xml)             gate
=========  ==========================================================================  =========

Each stage module owns its stage: it asks the task family (:class:`~compress.stages.family.TaskFamily`)
for what differs (for distillation, the family's plan: its fingerprint and its trainer), runs it
through :func:`export.base.stages.run_stage` (a stage whose inputs and settings are unchanged is
skipped) and returns a typed output (:mod:`compress.stages.outputs`). Only encoders prune
(``TaskFamily.prunes``); `compress prune` runs the same plan alone.
"""

from compress.chain_state import FOLDERS, STAGES

__all__ = ["FOLDERS", "STAGES"]
