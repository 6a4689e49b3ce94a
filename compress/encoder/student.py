"""The student: its spec, its construction from the teacher, and its saved folder.

Spec forms (``--student``):

* ``layers=3``: three of the teacher's layers, evenly spaced and always keeping the last one
  (6 -> 3 takes layers 1, 3, 5), weights copied from the teacher (the DistilBERT/MiniLM recipe).
* ``layers=0,2,5``: exactly those teacher layers.
* ``layers=4,hidden=256,heads=4,ffn=1024``: a narrower student. Every weight starts as the
  leading slice of the matching teacher weight (the teacher's first 256 hidden units, first
  1024 FFN units), a warm start that trains far faster than random init. A learned projection
  (student hidden -> teacher hidden) maps the student's states into the teacher's space for the
  losses; for sentence encoders it is saved as a sentence-transformers ``Dense`` module so the
  student's embeddings keep the teacher's dimension.
* a path to a JSON file: a config whose keys (``num_hidden_layers``, ``hidden_size``,
  ``num_attention_heads``, ``intermediate_size``, optional ``teacher_layers``, any other config
  attribute such as dropout) override the teacher's config.

The student keeps the teacher's tokenizer and is saved with ``save_pretrained(safe_serialization=True)``
plus the sentence-transformers files when the teacher had them, so it loads wherever the teacher did.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError
from export.base.files import atomic_directory, atomic_write_json
from export.base.tasks import Pooling, Task, is_sentence_transformer
from export.torch_model import DENSE_FOLDER, read_dense

if TYPE_CHECKING:
    from compress.encoder.width import WidthChoice

SPEC_KEYS = ("layers", "hidden", "heads", "ffn")
_FFN_ATTRIBUTES = ("intermediate_size", "hidden_dim", "ffn_dim", "encoder_ffn_dim")
_CONFIG_KEY_ALIASES = {"num_hidden_layers": "layers", "n_layers": "layers", "hidden_size": "hidden", "dim": "hidden",
                       "num_attention_heads": "heads", "n_heads": "heads", "intermediate_size": "ffn",
                       "hidden_dim": "ffn", "teacher_layers": "layers"}
_IGNORED_CONFIG_KEYS = {"architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype"}
_LAYER_INDEX = re.compile(r"\.(layer|layers)\.(\d+)\.")
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_DENSE = "sentence_transformers.models.Dense"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class StudentSpec:
    """A parsed ``--student`` value (unset fields follow the teacher)."""

    text: str
    num_layers: int | None = None
    teacher_layers: tuple[int, ...] | None = None
    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudentPlan:
    """The student's shape, resolved against one teacher."""

    teacher_layers: tuple[int, ...]  # the teacher layer each student layer starts from and is matched to
    hidden: int
    heads: int
    ffn: int
    teacher_hidden: int
    config_overrides: dict[str, Any] = field(default_factory=dict)
    teacher_heads: int | None = None
    teacher_ffn: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.teacher_layers)

    @property
    def narrower(self) -> bool:
        return self.hidden != self.teacher_hidden

    @property
    def slimmer(self) -> bool:
        """Narrower, or with fewer heads or FFN neurons per layer than the teacher: units must be chosen."""
        return self.narrower or self.teacher_heads is not None and self.heads < self.teacher_heads \
            or self.teacher_ffn is not None and self.ffn < self.teacher_ffn

    def describe(self) -> str:
        layers = ",".join(str(i) for i in self.teacher_layers)
        shape = f", hidden {self.hidden}, {self.heads} heads, ffn {self.ffn}" if self.narrower else ""
        return f"{self.num_layers} layers (from teacher layers {layers}){shape}"


@dataclass
class Student:
    """A student model, its optional projection into the teacher's hidden space, and its layer map."""

    model: Any
    projection: Any  # torch.nn.Linear(student hidden -> teacher hidden) or None
    teacher_layers: tuple[int, ...]

    @property
    def parameters(self) -> int:
        count = sum(p.numel() for p in self.model.parameters())
        if self.projection is not None:
            count += sum(p.numel() for p in self.projection.parameters())
        return count

    def modules(self) -> list[Any]:
        return [self.model] + ([self.projection] if self.projection is not None else [])


def parse_student_spec(text: str) -> StudentSpec:
    """Parse ``layers=3``, ``layers=0,2,5``, ``layers=4,hidden=256,heads=4,ffn=1024`` or a JSON file path."""
    text = text.strip()
    if not text:
        raise CompressError("--student is empty; examples: layers=3, layers=0,2,5, layers=4,hidden=256,heads=4,ffn=1024")
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        return _spec_from_file(path)
    values: dict[str, list[str]] = {}
    key: str | None = None
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            key, value = (part.strip() for part in token.split("=", 1))
            if key not in SPEC_KEYS:
                raise CompressError(f"--student {text!r}: unknown key {key!r}; keys: {', '.join(SPEC_KEYS)}")
            if key in values:
                raise CompressError(f"--student {text!r}: {key} given twice")
            values[key] = [value]
        elif key == "layers" and token:
            values[key].append(token)  # layers=0,2,5 continues over commas
        else:
            raise CompressError(f"--student {text!r}: cannot read {token!r}; examples: layers=3, layers=0,2,5, "
                                "layers=4,hidden=256,heads=4,ffn=1024, or a config .json file")
    ints: dict[str, list[int]] = {}
    for name, raw in values.items():
        try:
            ints[name] = [int(v) for v in raw]
        except ValueError:
            raise CompressError(f"--student {text!r}: {name} must be whole numbers, got {','.join(raw)!r}") from None
    spec_args: dict[str, Any] = {"text": text}
    if "layers" in ints:
        if len(ints["layers"]) == 1:
            spec_args["num_layers"] = ints["layers"][0]
        else:
            spec_args["teacher_layers"] = tuple(ints["layers"])
    for name in ("hidden", "heads", "ffn"):
        if name in ints:
            spec_args[name] = ints[name][0]
    return StudentSpec(**spec_args)


def _spec_from_file(path: Path) -> StudentSpec:
    if not path.is_file():
        raise CompressError(f"student config file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        raise CompressError(f"{path} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise CompressError(f"{path}: expected a JSON object of config keys")
    spec_args: dict[str, Any] = {"text": str(path)}
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        name = _CONFIG_KEY_ALIASES.get(key, key)
        if key in _IGNORED_CONFIG_KEYS:
            continue
        if name == "layers":
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                spec_args["teacher_layers"] = tuple(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                spec_args["num_layers"] = value
            else:
                raise CompressError(f"{path}: {key} must be a whole number or a list of teacher layer indices")
        elif name in ("hidden", "heads", "ffn"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise CompressError(f"{path}: {key} must be a whole number")
            spec_args[name] = value
        else:
            overrides[key] = value
    return StudentSpec(**spec_args, config_overrides=overrides)


def evenly_spaced_layers(teacher_layers: int, count: int) -> tuple[int, ...]:
    """``count`` of ``teacher_layers`` indices, evenly spaced, the last one always kept (6, 3 -> 1, 3, 5)."""
    return tuple(round((i + 1) * teacher_layers / count) - 1 for i in range(count))


def _ffn_attribute(config: Any) -> str:
    for name in _FFN_ATTRIBUTES:
        if hasattr(config, name):
            return name
    raise CompressError(f"cannot find the feed-forward size in a {type(config).__name__}")


def plan_student(spec: StudentSpec, teacher_config: Any) -> StudentPlan:
    """Resolve a spec against the teacher's config, checking that the shape is buildable."""
    n_teacher = int(teacher_config.num_hidden_layers)
    teacher_hidden = int(teacher_config.hidden_size)
    where = f"--student {spec.text!r}"
    if spec.teacher_layers is not None:
        layers = spec.teacher_layers
        bad = [i for i in layers if not 0 <= i < n_teacher]
        if bad:
            raise CompressError(f"{where}: teacher has layers 0..{n_teacher - 1}; no layer {bad[0]}")
        if list(layers) != sorted(set(layers)):
            raise CompressError(f"{where}: teacher layers must be distinct and increasing")
    else:
        count = spec.num_layers if spec.num_layers is not None else n_teacher
        if not 1 <= count <= n_teacher:
            raise CompressError(f"{where}: layers must be between 1 and the teacher's {n_teacher}")
        layers = evenly_spaced_layers(n_teacher, count)
    hidden = spec.hidden or teacher_hidden
    heads = spec.heads or (int(teacher_config.num_attention_heads) if hidden == teacher_hidden else None)
    if heads is None:
        teacher_head_dim = teacher_hidden // int(teacher_config.num_attention_heads)
        heads = max(1, hidden // teacher_head_dim)
    if hidden <= 0 or heads <= 0 or hidden % heads:
        raise CompressError(f"{where}: hidden ({hidden}) must be a positive multiple of heads ({heads})")
    teacher_ffn = int(getattr(teacher_config, _ffn_attribute(teacher_config)))
    ffn = spec.ffn or (teacher_ffn if hidden == teacher_hidden else max(1, teacher_ffn * hidden // teacher_hidden))
    if ffn <= 0:
        raise CompressError(f"{where}: ffn must be positive")
    teacher_heads = int(teacher_config.num_attention_heads)
    for name, value, limit in (("hidden", hidden, teacher_hidden), ("heads", heads, teacher_heads),
                               ("ffn", ffn, teacher_ffn)):
        if value > limit:  # its units are chosen from the teacher's: there are no more to choose
            raise CompressError(f"{where}: {name} {value:,} is wider than the teacher's {limit:,}; a student is "
                                "at most as wide as its teacher")
    _check_overrides_fit(where, spec.config_overrides, hidden)
    return StudentPlan(tuple(layers), hidden, heads, ffn, teacher_hidden, dict(spec.config_overrides),
                       teacher_heads=int(teacher_config.num_attention_heads), teacher_ffn=teacher_ffn)


MAX_OVERRIDE_TABLE_ROWS = 1 << 20  # rows of an embedding table a config file may ask for (vocabulary, positions)


def _check_overrides_fit(where: str, overrides: dict[str, Any], hidden: int) -> None:
    """A config file's sizes are refused before a byte is allocated when they cannot be a student."""
    for key in ("vocab_size", "max_position_embeddings", "type_vocab_size"):
        value = overrides.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CompressError(f"{where}: {key} must be a positive whole number")
        if value > MAX_OVERRIDE_TABLE_ROWS:
            gib = value * hidden * 4 / 2**30
            raise CompressError(f"{where}: {key} {value:,} would make a {gib:,.0f} GiB table; at most "
                                f"{MAX_OVERRIDE_TABLE_ROWS:,}")


def student_config(teacher_config: Any, plan: StudentPlan) -> Any:
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = plan.num_layers
    config.hidden_size = plan.hidden
    config.num_attention_heads = plan.heads
    setattr(config, _ffn_attribute(config), plan.ffn)
    for key, value in plan.config_overrides.items():
        setattr(config, key, value)
    config.architectures = list(getattr(teacher_config, "architectures", None) or [])
    return config


def build_student(teacher_model: Any, plan: StudentPlan, calibration: dict[str, Any] | None = None) -> Student:
    """A student shaped by ``plan``, initialised from a full-precision teacher's weights.

    A narrower student starts from the teacher's most important hidden units, heads and FFN
    neurons (:mod:`compress.encoder.width`), measured on ``calibration`` (a tokenized batch of
    real text) when given, not from its leading ones.
    """
    import torch

    from compress.encoder.width import choose_width

    config = student_config(teacher_model.config, plan)
    torch.manual_seed(0)  # the parts not copied from the teacher start the same on every run
    model = type(teacher_model)(config)
    choice = choose_width(teacher_model, plan.hidden, plan.heads, plan.ffn, calibration) if plan.slimmer else None
    copy_teacher_weights(model, teacher_model, plan.teacher_layers, choice)
    projection = make_projection(plan.hidden, plan.teacher_hidden, choice.hidden if choice else None) \
        if plan.narrower else None
    return Student(model.float().train(), projection, plan.teacher_layers)


def copy_teacher_weights(student: Any, teacher: Any, teacher_layers: tuple[int, ...],
                         choice: WidthChoice | None = None) -> None:
    """Copy each student tensor from its teacher counterpart: the remapped layer, and the units
    ``choice`` keeps (the leading slice where there is no choice, or the tensor is not known by name)."""
    import torch

    from compress.encoder.width import gather

    source = teacher.state_dict()

    def teacher_name(name: str) -> tuple[str, int | None]:
        match = _LAYER_INDEX.search(name)
        if not match:
            return name, None
        index = teacher_layers[int(match.group(2))]
        return f"{name[:match.start()]}.{match.group(1)}.{index}.{name[match.end():]}", index

    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            origin_name, layer = teacher_name(name)
            origin = source.get(origin_name)
            if origin is None or origin.dim() != tensor.dim():
                continue
            picked = gather(origin, name, layer, choice, tuple(tensor.shape)) if choice is not None else None
            if picked is not None:
                tensor.copy_(picked.to(tensor.dtype))
                continue
            region = tuple(slice(0, min(a, b)) for a, b in zip(tensor.shape, origin.shape))
            tensor[region].copy_(origin[region].to(tensor.dtype))


def make_projection(student_hidden: int, teacher_hidden: int, kept: list[int] | None = None) -> Any:
    """Linear student -> teacher hidden, starting as the identity onto the teacher units the student kept.

    The narrower student's unit ``i`` starts as the teacher's unit ``kept[i]`` (the leading units
    when ``kept`` is None), so that is where its states already sit in the teacher's space.
    """
    import torch

    projection = torch.nn.Linear(student_hidden, teacher_hidden)
    units = kept if kept is not None else list(range(min(student_hidden, teacher_hidden)))
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.zero_()
        for column, unit in enumerate(units[:student_hidden]):
            projection.weight[unit, column] = 1.0
    return projection


def load_student(folder: Path, task: Task, teacher_hidden: int, teacher_num_layers: int) -> Student:
    """An existing student folder (e.g. a pruned student to recover), with its projection if it saved one."""
    from export.torch_model import load_model

    folder = Path(folder)
    model = load_model(folder, task).train()
    projection = read_dense(folder)
    hidden = int(model.config.hidden_size)
    if projection is None and hidden != teacher_hidden:
        projection = make_projection(hidden, teacher_hidden)
    if projection is not None and (projection.in_features != hidden or projection.out_features != teacher_hidden):
        raise CompressError(f"{folder}: its Dense module maps {projection.in_features} -> {projection.out_features}, "
                            f"expected {hidden} -> {teacher_hidden}")
    layers = evenly_spaced_layers(teacher_num_layers, min(int(model.config.num_hidden_layers), teacher_num_layers))
    return Student(model, projection, layers)


def check_sentence_transformer_teacher(folder: Path) -> None:
    """Refuse teachers whose sentence-transformers pipeline has modules this tool does not reproduce."""
    if not is_sentence_transformer(folder):
        return
    modules = json.loads((Path(folder) / "modules.json").read_text())
    known = (_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE)
    for module in modules:
        kind = module.get("type", "")
        if not any(kind.endswith(name.rsplit(".", 1)[1]) for name in known):
            raise CompressError(f"{folder}: sentence-transformers module {kind!r} is not supported "
                                "(supported: Transformer, Pooling, Normalize)")


def save_student(student: Student, tokenizer: Any, folder: Path, *, task: Task, teacher_dir: Path,
                 pooling: Pooling | None) -> Path:
    """Write the student folder atomically: weights (safetensors), config, tokenizer, sentence-transformers files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        student.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        wants_st = task == "feature-extraction" and (is_sentence_transformer(teacher_dir) or student.projection is not None)
        if wants_st:
            assert pooling is not None
            hidden = int(student.model.config.hidden_size)
            modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER}]
            pooling_config = _pooling_config(teacher_dir, pooling)
            pooling_config["word_embedding_dimension"] = hidden
            atomic_write_json(tmp / "1_Pooling" / "config.json", pooling_config)
            modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_POOLING})
            if student.projection is not None:
                projection = student.projection
                atomic_write_json(tmp / DENSE_FOLDER / "config.json", {
                    "in_features": projection.in_features, "out_features": projection.out_features,
                    "bias": projection.bias is not None, "activation_function": "torch.nn.modules.linear.Identity",
                })
                tensors = {f"linear.{k}": v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}
                save_file(tensors, str(tmp / DENSE_FOLDER / "model.safetensors"))
                modules.append({"idx": 2, "name": "2", "path": DENSE_FOLDER, "type": _ST_DENSE})
            if pooling.normalize:
                index = len(modules)
                modules.append({"idx": index, "name": str(index), "path": f"{index}_Normalize", "type": _ST_NORMALIZE})
            atomic_write_json(tmp / "modules.json", modules)
            for name in ("sentence_bert_config.json", "config_sentence_transformers.json"):
                if (teacher_dir / name).is_file():
                    shutil.copyfile(teacher_dir / name, tmp / name)
            if not (tmp / "sentence_bert_config.json").is_file():
                atomic_write_json(tmp / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": False})
    return folder


def _pooling_config(teacher_dir: Path, pooling: Pooling) -> dict[str, Any]:
    path = teacher_dir / "1_Pooling" / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"pooling_mode_cls_token": pooling.mode == "cls", "pooling_mode_mean_tokens": pooling.mode == "mean",
            "pooling_mode_max_tokens": pooling.mode == "max", "pooling_mode_mean_sqrt_len_tokens": False}
