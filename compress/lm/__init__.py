"""Distilling a causal language model (a chat LLM) into a smaller one, and what it needs.

Modules: ``data`` (prompt/completion examples, tokenization, batching), ``teacher`` (resolving and
loading the teacher, converting the bundled SmolLM2 GGUF once), ``student`` (a student made of a
subset of the teacher's decoder layers). Nothing heavy is imported here: ``import compress.lm``
stays cheap, and torch / transformers load only when a function that needs them runs.
"""
