"""Recipes: `compress distill --config FILE`, the recipes shipped under recipes/, and RUN_DIR/recipe.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compress.cli.distill import distill
from compress.recipe import COMMAND_LINE_ONLY, SECTIONS, section_of
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ENCODER_RECIPES = ("jetson", "x86-avx512-vnni", "rpi5", "mpnet")
QUICK = ("--max-steps", "2", "--threads", "1", "--batch-size", "8", "--stop-after", "distill")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(60)) + "\n")
    return path


def test_every_option_of_distill_has_a_place() -> None:
    names = {param.name for param in distill.params}
    placed = {name for section in SECTIONS for name in section.keys.values()}
    assert names == placed | set(COMMAND_LINE_ONLY), names ^ (placed | set(COMMAND_LINE_ONLY))


def test_every_shipped_recipe_reads_and_names_real_sections() -> None:
    shipped = sorted(path.stem for path in RECIPES.glob("*.yaml"))
    assert shipped == sorted([*ENCODER_RECIPES, "smollm2-rpi5", "endpoint"])
    for path in RECIPES.glob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path.name} says what it is for in its first line"


@pytest.mark.parametrize("name", ENCODER_RECIPES)
def test_an_encoder_recipe_runs(name: str, tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["distill", "--config", str(RECIPES / f"{name}.yaml"), "--teacher", str(tiny_encoder),
                      "--data", str(text_file), "--out", str(run), *QUICK])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "distill" / "stage.json").read_text())
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    from export.runtime.profiles import load_profile

    assert record["params"]["profile"] == load_profile(recipe["profile"]).name  # an alias: its profile's name
    written = yaml.safe_load((run / "recipe.yaml").read_text())
    assert written["profile"] == recipe["profile"] and written["teacher"]["name"] == str(tiny_encoder)
    assert written["training"]["max_steps"] == 2  # the command line won over the file
    assert "lm" not in written["losses"]  # another family's options are not written


def test_the_language_model_recipe_runs(tiny_llama: Path, text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["distill", "--config", str(RECIPES / "smollm2-rpi5.yaml"), "--teacher", str(tiny_llama),
                      "--data", str(text_file), "--out", str(run), "--student", "layers=2", *QUICK])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((run / "recipe.yaml").read_text())
    assert written["losses"]["lm"] == "forward_kl" and written["quantize"]["block_size"] == 32


def test_recipe_yaml_repeats_the_run(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_cli(["distill", "--teacher", str(tiny_encoder), "--data", str(text_file), "--out", str(run),
                     "--lr", "0.001", "--student", "layers=2", *QUICK])
    assert first.exit_code == 0, first.output
    written = (run / "recipe.yaml").read_text()
    assert f"compress distill --config {run / 'recipe.yaml'}" in written
    again = run_cli(["distill", "--config", str(run / "recipe.yaml")])
    assert again.exit_code == 0, again.output
    assert "up to date" in again.stderr  # the same settings: the same fingerprint, the stage skipped
    assert (run / "recipe.yaml").read_text().split("\n", 1)[1] == written.split("\n", 1)[1]


@pytest.mark.parametrize("text, message", [
    ("training: {learning_rate: 0.1}\n", "training.learning_rate: unknown key; training has"),
    ("optimizer: {lr: 0.1}\n", "optimizer: unknown key"),
    ("training: {lr: fast}\n", "training.lr: 'fast' is not a valid float"),
    ("training: {time_budget: soon}\n", "training.time_budget:"),
    ("training: 3\n", "training must be a section of keys"),
    ("student: {spec: [1, 2]}\n", "student.spec: expected a single value"),
    ("losses: {lm: jsd}\n", "losses.lm (recipe"),  # a language-model key in an encoder job
    ("- a list\n", "expected a mapping of keys"),
    ("a: &x 1\nb: *x\n", "anchors"),
])
def test_a_bad_recipe_is_one_line_naming_the_key(text: str, message: str, tiny_encoder: Path, text_file: Path,
                                                  tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    result = run_cli(["distill", "--config", str(recipe), "--teacher", str(tiny_encoder), "--data", str(text_file),
                      "--out", str(tmp_path / "run"), *QUICK])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_recipe_is_exit_2(tmp_path: Path) -> None:
    result = run_cli(["distill", "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "none.yaml" in result.stderr and "Traceback" not in result.stderr


def test_help_groups_the_options_by_the_recipe_sections() -> None:
    result = run_cli(["distill", "--help"])
    assert result.exit_code == 0
    for section in SECTIONS:
        assert section.title in result.stdout, section.title
    assert result.stdout.index("Training") < result.stdout.index("--lr") < result.stdout.index("Losses")
    assert section_of("config") is None and "Invocation (command line only)" in result.stdout
