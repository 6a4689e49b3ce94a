"""The latency model's error on this host, and the students it picks for each profile.

For each profile (x86-avx512-vnni and raspberry-pi-5 by default) the search of ``--student auto``
runs as the chain runs it: four candidate graphs timed here, the model fitted, every candidate
estimated, the largest that fits 80% of the profile's p95 budget chosen. Then every candidate of
the last profile's search is exported and timed here (random weights, the profile's workload,
fp32 and int8-dynamic) the way the chain's release stage times a release: interleaved with the
teacher's fp32 graph in one process, intra-op spinning off. Its measured p95 is set beside the
model's p95 for this host: the model's error, candidate by candidate (the goal is within 25%).

    python benchmarks/student_search.py                      # the default teacher, all-MiniLM-L6-v2
    python benchmarks/student_search.py --teacher mpnet      # all-mpnet-base-v2 (installed pieces)

Prints the tables and writes benchmarks/results/student_search[-TEACHER].json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

from transformers import AutoConfig

from compress.encoder.student_search import export_candidate_graph, search_student
from export.runtime.latency_model import EncoderShape
from compress.encoder.teacher import resolve_teacher
from export.quantize import quantize_file
from export.runtime.bench import bench_interleaved
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile

RUNS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--profiles", nargs="+", default=["x86-avx512-vnni", "rpi5"])
    args = parser.parse_args()

    record = ResultRecord.start("student_search")
    name, folder = resolve_teacher(args.teacher)
    config = AutoConfig.from_pretrained(folder)
    searches = {}
    for profile_name in args.profiles:
        profile = load_profile(profile_name)
        search = search_student(config, name, profile)
        if search is None:
            print(f"{profile.name}: this host cannot estimate its target")
            continue
        searches[profile.name] = search
        print(f"\n{profile.name} (p95 budget {search.budget_p95_ms:g} ms; {search.basis}; calibration "
              f"{search.seconds:.0f} s, fit error at its own points "
              f"{search.latency_model['calibration_error']:.1%}):")
        print("\n".join(search.table()))
        print(f"chosen: {search.chosen}: {search.why}")

    last = list(searches.values())[-1]
    profile = load_profile(last.profile)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        config.to_json_file(str(Path(scratch) / "config.json"))
        teacher = Path(scratch) / "teacher.onnx"
        export_candidate_graph(config, EncoderShape(int(config.num_hidden_layers), int(config.hidden_size),
                                                    int(config.num_attention_heads), int(config.intermediate_size),
                                                    int(config.vocab_size)), teacher)
        for candidate in last.candidates:
            fp32 = Path(scratch) / "candidate.onnx"
            export_candidate_graph(config, candidate.shape, fp32)
            int8 = Path(scratch) / "candidate.int8.onnx"
            quantize_file(fp32, int8, "int8-dynamic", profile.quantization_preset, [])
            reports = bench_interleaved([teacher, fp32, int8], profile, runs=RUNS, warmup=10, progress=False)
            for precision, report in (("fp32", reports[1]), ("int8-dynamic", reports[2])):
                measured = report.latency.p95_ms
                estimate = candidate.host_p95_ms[precision]
                rows.append({"spec": candidate.spec, "precision": precision, "estimated_p95_ms": estimate,
                             "measured_p95_ms": round(measured, 3), "error": round(estimate / measured - 1.0, 4)})
                print(f"  {candidate.spec:<40} {precision:<13} estimated {estimate:7.2f} ms  measured "
                      f"{measured:7.2f} ms  error {estimate / measured - 1.0:+.1%}")
    errors = [abs(r["error"]) for r in rows]
    within = sum(e <= 0.25 for e in errors)
    print(f"latency model on this host: median |error| {statistics.median(errors):.1%}, largest {max(errors):.1%}, "
          f"{within} of {len(rows)} within 25%")

    suffix = f"-{args.teacher}" if args.teacher else ""
    record.finish(RESULTS_DIR / f"student_search{suffix}.json", detect_host(), teacher=name,
                  searches={p: {"chosen": s.chosen, "why": s.why, "basis": s.basis, "budget_p95_ms": s.budget_p95_ms,
                                "seconds": s.seconds, "latency_model": s.latency_model,
                                "candidates": [{"spec": c.spec, "block_parameters": c.block_parameters,
                                                "p95_ms": c.p95_ms, "host_p95_ms": c.host_p95_ms, "fits": c.fits}
                                               for c in s.candidates]} for p, s in searches.items()},
                  host_error={"profile": last.profile, "runs": RUNS, "median_abs_error": statistics.median(errors),
                              "max_abs_error": max(errors), "within_25_percent": within, "candidates": rows})


if __name__ == "__main__":
    main()
