"""Everything about the exported artifact, below ``compress/``.

``export.base`` is the lowest floor (errors, files, records, tasks, corpus); ``export.runtime``
is the device runtime that runs on a board with onnxruntime and numpy alone (bench, gate,
verify, profiles); the modules here are the host side that needs torch or optimum (ONNX export,
quantization, packaging). Nothing under ``export/`` imports ``compress/``.
"""
