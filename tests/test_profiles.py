from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli
from export.base.errors import CompressError
from export.runtime.profiles import list_profiles, load_profile, parse_duration

SHIPPED = {"jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5", "android-arm64", "x86-avx2",
           "x86-avx512-vnni", "nvidia-gpu", "host"}


def test_every_required_profile_ships_and_validates() -> None:
    assert SHIPPED <= {p.name for p in list_profiles()}


def test_alias_and_name_resolve_to_the_same_profile() -> None:
    assert load_profile("jetson").name == load_profile("jetson-orin-nano").name == "jetson-orin-nano"


def test_quantization_preset_follows_the_hardware() -> None:
    assert load_profile("raspberry-pi-5").quantization_preset == "arm64"
    assert load_profile("x86-avx512-vnni").quantization_preset == "avx512_vnni"
    assert load_profile("x86-avx2").quantization_preset == "avx2"
    assert load_profile("jetson").quantization_preset == "tensorrt"


def _user_profile(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(load_profile("x86-avx2").source.read_text())
    data.update(name="mine-x86-avx2", aliases=[])  # shipped names are reserved
    mutate(data)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_file_works_where_a_name_does(tmp_path: Path) -> None:
    path = _user_profile(tmp_path, lambda d: d.update(name="my-box"))
    assert load_profile(str(path)).name == "my-box"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.update(turbo=True), "turbo: unknown key"),
        (lambda d: d["budgets"]["latency_ms"].update(p95=-1), "budgets.latency_ms.p95"),
        (lambda d: d["workload"].update(batch_size="many"), "workload.batch_size"),
        (lambda d: d.update(precision="int3"), "precision"),
        (lambda d: d["distill"].update(time_budget="soon"), "distill.time_budget"),
    ],
)
def test_invalid_profile_names_file_and_key(tmp_path: Path, mutate, key: str) -> None:
    path = _user_profile(tmp_path, mutate)
    with pytest.raises(CompressError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_parse_duration() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        parse_duration("0s")


def test_cli_profiles_list_and_show() -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["profiles", "list", "--json"])
    assert listed.exit_code == 0 and "raspberry-pi-5" in listed.output
    shown = runner.invoke(cli, ["profiles", "show", "rpi5"])
    assert shown.exit_code == 0 and "Cortex-A76" in shown.output


def test_cli_unknown_profile_is_one_line_exit_2() -> None:
    from tests.cli_helpers import run_cli

    result = run_cli(["profiles", "show", "no-such-board"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown profile" in result.stderr
    assert "Traceback" not in result.stderr
