"""What runs on the board: ``python3 compress-runtime.pyz check|bench|verify ...``, JSON on stdout.

The host (``compress bench --on``, ``verify --on``, ``devices check``) sends this runtime as one
zipapp with the files to measure, runs one of these commands over SSH and reads the JSON back.
argparse and the runtime only: no click, no torch; a failure is ``{"error": "..."}`` and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

# What each kind of work needs on the board, and how to install it.
NEEDED = {"numpy": "numpy", "onnxruntime": "onnxruntime", "yaml": "pyyaml", "pydantic": "pydantic"}
NEEDED_FOR_TEXT = {"tokenizers": "tokenizers"}
NEEDED_TO_SIGN = {"cryptography": "cryptography"}


def _check() -> dict[str, Any]:
    """The board's facts and what it lacks (with the pip line that brings it)."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for module, package in {**NEEDED, **NEEDED_FOR_TEXT}.items():
        try:
            found[package] = str(getattr(importlib.import_module(module), "__version__", "installed"))
        except ImportError:
            missing.append(package)
    facts: dict[str, Any] = {"python": platform.python_version(), "packages": found, "missing": missing,
                             "free_disk_mb": round(shutil.disk_usage(Path.cwd()).free / 2**20, 1)}
    if "onnxruntime" in found:
        import onnxruntime

        facts["providers"] = list(onnxruntime.get_available_providers())
    if "numpy" in found:
        from export.runtime.host import detect_host

        facts["host"] = detect_host().to_dict()
    return facts


def _require(*modules: str) -> None:
    """Each module importable here, or one line that says what to install (and exit 2)."""
    names = {**NEEDED, **NEEDED_FOR_TEXT, **NEEDED_TO_SIGN}
    missing = [names.get(m, m) for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(_fail(f"the board lacks {', '.join(missing)}: pip install {' '.join(missing)}"))
    for module in modules:  # present is not enough: a wheel built for another CPU or libc fails as it loads
        try:
            importlib.import_module(module)
        except ImportError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f"{platform.machine()}, Python {platform.python_version()}"
            raise SystemExit(_fail(f"{names.get(module, module)} is installed but does not load on this board "
                                   f"({detail}): pip install --force-reinstall {names.get(module, module)} "
                                   f"(a wheel for {where})")) from None


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    _require("numpy", "onnxruntime", "yaml", "pydantic")
    from export.runtime.profiles import load_profile_file
    from export.runtime.release_kind import kind_of_model

    profile = load_profile_file(args.profile)
    model = Path(args.model)
    kind = kind_of_model(model)
    workload = {k: v for k, v in {"batch_size": args.batch_size, "sequence_length": args.sequence_length,
                                  "prompt_length": args.prompt_length, "new_tokens": args.new_tokens}.items()
                if v is not None}
    runs, warmup = kind.default_runs
    if args.sign:
        _require("cryptography")
    report = kind.bench(model, profile, runs=args.runs or runs, warmup=warmup if args.warmup is None else args.warmup,
                        threads=args.threads, other=Path(args.other) if args.other else None, **workload).to_dict()
    # Paths as they are on the host, not in this temporary folder; each report says where it was measured.
    labels = {"model": args.model_label or args.model, "other": args.other_label or args.other}
    remote = json.loads(args.remote) if args.remote else None
    for part, name in (((report["model"], "model"), (report["other"], "other")) if "other" in report else
                       ((report, "model"),)):
        part["model"]["path"] = labels[name]
        if remote is not None:
            part["remote"] = remote
    if args.sign:
        from export.runtime.signing import sign_report

        report = sign_report(report, args.sign)
    return report


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    _require("numpy", "onnxruntime", "yaml", "pydantic", "tokenizers")
    from dataclasses import asdict

    from export.runtime.verify import verify_archive

    report = verify_archive(args.archive, gate=args.gate, profile=args.profile, runs=args.runs, warmup=args.warmup,
                            trust=[Path(k) for k in args.trust], require_signature=args.require_signature,
                            libraries=args.libraries)
    return asdict(report)


def _sha256(paths: list[str]) -> dict[str, str]:
    from export.base.files import sha256_file

    return {path: sha256_file(path) for path in paths}


def _fail(message: str) -> int:
    print(json.dumps({"error": message}))
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compress-runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check")
    hashes = commands.add_parser("sha256")
    hashes.add_argument("paths", nargs="+")
    bench = commands.add_parser("bench")
    bench.add_argument("model")
    bench.add_argument("--profile", required=True)
    bench.add_argument("--other")
    for name in ("model-label", "other-label", "remote", "sign"):
        bench.add_argument(f"--{name}")
    for name in ("runs", "warmup", "threads", "batch-size", "sequence-length", "prompt-length", "new-tokens"):
        bench.add_argument(f"--{name}", type=int)
    verify = commands.add_parser("verify")
    verify.add_argument("archive")
    verify.add_argument("--gate", action="store_true")
    verify.add_argument("--profile")
    verify.add_argument("--runs", type=int)
    verify.add_argument("--warmup", type=int)
    verify.add_argument("--trust", action="append", default=[])
    verify.add_argument("--require-signature", action="store_true")
    verify.add_argument("--libraries", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            result: dict[str, Any] = _check()
        elif args.command == "sha256":
            result = _sha256(args.paths)
        elif args.command == "bench":
            result = _bench(args)
        else:
            result = _verify(args)
    except Exception as exc:  # every failure goes back to the host as one line
        from export.base.errors import CompressError

        kind = "" if isinstance(exc, CompressError) else f"{type(exc).__name__}: "
        return _fail(f"{kind}{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
