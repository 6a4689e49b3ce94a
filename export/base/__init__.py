"""The lowest floor: what every other module may use and that itself uses nothing of the project.

Errors, atomic files, stage records, task names, the default corpus, JSON reports and quiet
loggers. Standard library, numpy, pydantic and PyYAML only: no torch, no onnxruntime at import.
"""
