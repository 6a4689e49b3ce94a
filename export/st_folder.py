"""What makes an exported encoder folder a sentence-transformers model as well as ours.

Our sentence-encoder graph computes the whole sentence-transformers pipeline (transformer,
pooling, optional Dense, normalisation) and outputs ``sentence_embedding``. sentence-transformers'
ONNX backend (``SentenceTransformer(folder, backend="onnx")``) runs only the transformer in ONNX
Runtime, through Optimum, and reads the graph's ``last_hidden_state``; pooling, Dense and
normalisation it runs itself from the module folders that ``modules.json`` names. So a release
folder carries both: the graph gains ``last_hidden_state`` (an Identity of its
``token_embeddings``, no second copy of any weight), and the module files travel beside it. Both
libraries then compute the same vector from one file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODULES_FILE = "modules.json"
HIDDEN_STATES = "last_hidden_state"
TOKEN_EMBEDDINGS = "token_embeddings"
# Read by sentence-transformers beside modules.json (prompts, similarity function, versions).
_TOP_LEVEL_FILES = (MODULES_FILE, "config_sentence_transformers.json", "sentence_bert_config.json")


def module_files(folder: Path) -> list[str]:
    """The sentence-transformers files in ``folder``, relative to it (empty: not a sentence-transformers folder).

    The transformer module (path ``""``) is the ONNX graph itself and is not listed; every other
    module's folder (pooling, Dense, normalise) is, file by file.
    """
    modules_path = folder / MODULES_FILE
    if not modules_path.is_file():
        return []
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return []
    files = [name for name in _TOP_LEVEL_FILES if (folder / name).is_file()]
    for module in modules if isinstance(modules, list) else []:
        relative = str(module.get("path", "")) if isinstance(module, dict) else ""
        module_dir = (folder / relative).resolve()
        if not relative or not module_dir.is_dir() or not module_dir.is_relative_to(folder.resolve()):
            continue
        files += sorted(path.relative_to(folder.resolve()).as_posix() for path in module_dir.rglob("*")
                        if path.is_file() and not path.is_symlink())
    return files


def copy_module_files(source: Path, target: Path) -> list[str]:
    """Copy the sentence-transformers files of ``source`` into ``target``; returns what was copied."""
    copied = []
    if source.resolve() == target.resolve():
        return copied
    for relative in module_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target / relative)
        copied.append(relative)
    return copied


def expose_hidden_states(onnx_path: Path) -> bool:
    """Give a sentence-encoder graph the ``last_hidden_state`` output sentence-transformers reads.

    An Identity of ``token_embeddings``: the transformer's token states before pooling, which is
    what sentence-transformers pools. Returns False (the file untouched) for a graph without
    ``token_embeddings`` or one that already has the output.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    outputs = {o.name: o for o in model.graph.output}
    if TOKEN_EMBEDDINGS not in outputs or HIDDEN_STATES in outputs:
        return False
    model.graph.node.append(onnx.helper.make_node("Identity", [TOKEN_EMBEDDINGS], [HIDDEN_STATES],
                                                  name="sentence_transformers_hidden_states"))
    alias = onnx.ValueInfoProto()
    alias.CopyFrom(outputs[TOKEN_EMBEDDINGS])
    alias.name = HIDDEN_STATES
    model.graph.output.append(alias)
    onnx.save(model, str(onnx_path))
    return True
