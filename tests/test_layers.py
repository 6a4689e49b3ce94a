"""The house rules, read from the code: imports point down, no circles, a torch-free device runtime."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.import_graph import ROOT, cycles, folder_graph, folder_of, import_graph, imported_names, project_modules

HEAVY = ("torch", "transformers", "optimum", "sentence_transformers")


def test_export_never_imports_compress() -> None:
    upward = sorted(f"{source} -> {target}" for source, targets in import_graph().items() if source.startswith("export")
                    for target in targets if target.startswith("compress"))
    assert upward == []


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_folder_takes_part_in_an_import_cycle() -> None:
    # Rooms, not only modules: distill/ may use training/, never the other way round.
    assert cycles(folder_graph(import_graph())) == []


def test_training_and_the_families_keep_their_floors() -> None:
    graph = folder_graph(import_graph())
    # Training reads the host's CPU flags (export.runtime.host) to choose its precision; nothing else above base.
    assert graph["compress.training"] <= {"compress.parallel", "export.base", "export.runtime"}, graph["compress.training"]
    assert "compress.families" not in graph["compress.training"]
    # The registry sits below the families: each registers itself; the registry names none of them.
    assert not graph["compress.families"] & {"compress.encoder", "compress.lm"}, \
        graph["compress.families"]


def test_no_module_imports_another_modules_private_names() -> None:
    reached = []
    for name, path in project_modules().items():
        for imported in imported_names(path):
            owner, _, attribute = imported.rpartition(".")
            if attribute.startswith("_") and not attribute.startswith("__") and owner != name:
                reached.append(f"{name} imports {imported}")
    assert reached == []


def test_the_graph_reader_sees_cycles_and_upward_imports() -> None:
    assert folder_of("compress.encoder.stage") == "compress.encoder" and folder_of("compress.chain") == "compress.chain"
    assert cycles(folder_graph({"p.a.x": {"p.b.y"}, "p.b.y": {"p.a.z"}, "p.a.z": set()})) == [["p.a", "p.b"]]
    # The two checks above must be able to fail: a made-up graph with a circle is found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # Imports inside functions count: the chain reaches the families only there.
    assert "compress.encoder.stage" in import_graph()["compress.encoder.family"]


def test_base_is_the_lowest_floor() -> None:
    graph = import_graph()
    for source, targets in graph.items():
        if source.startswith("export.base"):
            assert all(t.startswith("export.base") for t in targets), (source, targets)


def test_runtime_modules_name_no_heavy_library_anywhere_in_their_source() -> None:
    for name, path in project_modules().items():
        if not name.startswith("export.runtime"):
            continue
        for imported in imported_names(path):
            top = imported.split(".")[0]
            assert top not in HEAVY, f"{name} imports {imported}"
            if top in ("compress", "export"):
                assert imported.startswith(("export.runtime", "export.base")), f"{name} imports {imported}"


PROBE = """
import importlib, json, sys
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def test_every_runtime_module_imports_in_a_fresh_interpreter_without_heavy_libraries() -> None:
    runtime = sorted(name for name in project_modules() if name.startswith(("export.runtime", "export.base")))
    assert "export.runtime.verify" in runtime and "export.runtime.generation_bench" in runtime
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *runtime], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
