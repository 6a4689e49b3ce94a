"""A task family is a package and one registration: the registry finds it, the chain runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import compress.families as families
from compress.encoder.family import EncoderFamily
from compress.families import family_for
from compress.lm.endpoint_family import EndpointLMFamily
from compress.lm.family import CausalLMFamily
from export.base.errors import CompressError
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

# A third family, as a user's own package: it compresses teachers named "toy:FOLDER" (what differs from
# the encoder family is its name and the teachers it claims).
TOY_PACKAGE = '''
from compress.encoder.family import EncoderFamily
from compress.families import TeacherRequest, register


@register
class ToyFamily(EncoderFamily):
    name = "toy"
    teacher_words = "a toy encoder"
    claim_priority = 30

    @classmethod
    def claims(cls, request: TeacherRequest) -> bool:
        return (request.teacher or "").startswith("toy:")

    def make_config(self, settings):
        return super().make_config({**settings, "teacher": settings["teacher"].removeprefix("toy:")})
'''


def test_the_registry_picks_each_shipped_family(tiny_encoder: Path, tiny_llama: Path) -> None:
    assert type(family_for(None)) is EncoderFamily
    assert type(family_for(str(tiny_encoder))) is EncoderFamily
    assert type(family_for(str(tiny_llama))) is CausalLMFamily
    assert type(family_for("smollm2")) is CausalLMFamily
    assert type(family_for(None, teacher_url="http://127.0.0.1:1/v1")) is EndpointLMFamily
    with pytest.raises(CompressError, match="both name a teacher"):
        family_for("smollm2", teacher_url="http://127.0.0.1:1/v1")


def test_a_family_from_its_own_package_runs_the_chain(tiny_encoder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "toyfamily"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(TOY_PACKAGE)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))  # the registration ends with the test
    monkeypatch.delitem(sys.modules, "toyfamily", raising=False)
    import toyfamily  # noqa: F401  (registers itself)

    assert family_for(f"toy:{tiny_encoder}").name == "toy"
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(real_sentences(60)) + "\n")
    run = tmp_path / "run"
    result = run_cli(["distill", "--teacher", f"toy:{tiny_encoder}", "--data", str(data), "--out", str(run),
                      "--max-steps", "2", "--threads", "1", "--batch-size", "16", "--stop-after", "distill", "--json"])
    assert result.exit_code == 0, result.output
    chain = json.loads(result.stdout)
    assert chain["family"] == "toy" and chain["stages"] == {"distill": "ran"}
    assert (run / "distill" / "student" / "config.json").is_file()
