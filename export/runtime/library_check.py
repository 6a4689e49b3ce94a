"""Does each library the model card names load the release here, and give the build host's answer?

The manifest lists, per library (sentence-transformers, Optimum, ONNX Runtime GenAI, llama.cpp),
the lines a user types
(:class:`export.runtime.manifest.LibraryLoad`). ``verify`` runs each in a child Python process from
the unpacked archive's top folder: those libraries import torch, which the device runtime never
does itself, and a library that crashes or hangs must not take verify with it. A library that is
not installed is reported as such, not as a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export.runtime.agreement import mean_cosine
from export.runtime.manifest import LibraryLoad, Manifest

TIMEOUT_S = 600
# Runs ``code`` and prints one JSON line: the result as a flat list, or why it did not run.
_CHILD = """
import json, sys
request = json.loads(sys.stdin.read())
try:
    namespace = {}
    exec(request["code"], namespace)
    result = eval(request["result"], namespace)
    result = result.detach().numpy() if hasattr(result, "detach") else result
    import numpy
    values = numpy.asarray(result, dtype=numpy.float64)
    print(json.dumps({"shape": list(values.shape), "values": values.ravel().tolist()}))
except ModuleNotFoundError as exc:
    print(json.dumps({"missing": exc.name}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}))
"""


@dataclass
class LibraryCheck:
    """One library's load of the release, as run here."""

    library: str
    status: str  # matches | runs | not installed | fails
    detail: str  # the cosine with the reference, the output's shape, or the error

    @property
    def failed(self) -> bool:
        return self.status == "fails"


def check_library_loads(root: Path, manifest: Manifest) -> list[LibraryCheck]:
    """Run every :class:`LibraryLoad` of ``manifest`` from ``root`` and compare with the reference."""
    return [_check(root, load, manifest) for load in manifest.loads_with]


def _check(root: Path, load: LibraryLoad, manifest: Manifest) -> LibraryCheck:
    request = json.dumps({"code": load.code, "result": load.result})
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD], input=request, cwd=root, capture_output=True,
                              text=True, timeout=TIMEOUT_S, env=_child_environment())
    except subprocess.TimeoutExpired:
        return LibraryCheck(load.library, "fails", f"did not finish within {TIMEOUT_S} s")
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if "missing" in answer:
        return LibraryCheck(load.library, "not installed", f"no module {answer['missing']} here")
    if "values" not in answer:
        why = answer.get("error") or (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return LibraryCheck(load.library, "fails", why[:200])
    shape = "x".join(str(d) for d in answer["shape"])
    if manifest.reference.tokens is not None:  # a language model: the greedy answer's tokens
        return _compare_tokens(load, [int(v) for v in answer["values"]], manifest)
    if not load.compares:
        return LibraryCheck(load.library, "runs", f"output {shape}")
    import numpy as np

    got, want = np.asarray(answer["values"]), np.asarray(manifest.reference.values)
    if got.shape != want.shape:
        return LibraryCheck(load.library, "fails", f"output {shape}, the reference has {want.size} values")
    cosine = mean_cosine(want[None, :], got[None, :])
    status = "matches" if cosine >= manifest.reference.min_cosine else "fails"
    return LibraryCheck(load.library, status, f"cosine {cosine:.6f} with the build host's answer")


def _compare_tokens(load: LibraryLoad, tokens: list[int], manifest: Manifest) -> LibraryCheck:
    reference = manifest.reference.tokens or []
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    needed = manifest.reference.min_matching_tokens or len(reference)
    if not load.compares:  # another quantization of the same weights (a GGUF): its answer is shown, not judged
        return LibraryCheck(load.library, "runs" if tokens else "fails",
                            f"greedy answer {same}/{len(reference)} tokens identical to the build host's ONNX answer")
    status = "matches" if same >= needed else "fails"
    return LibraryCheck(load.library, status, f"greedy answer {same}/{len(reference)} tokens identical to the build "
                                              f"host's (first {needed} required)")


def _child_environment() -> dict[str, str]:
    # Nothing reaches a hub from a verify run; the archive holds every file the libraries read.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
