"""Every shipped artifact is reproduced by the training command docs/results.md names for it.

An artifact's metadata.json records the full training config of the run it was exported from.
docs/results.md ("Shipped artifacts") names one ``adaptctl train configs/<x>.yaml ...`` command
per artifact; the config that command builds (``TrainConfig.from_yaml(config, overrides)``, as
``adaptctl train`` builds it) must equal the recorded one field by field. Fields added to
``TrainConfig`` after a run was recorded take their defaults, as ``--resume`` reads them.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from meta_train.cli import _overrides, build_parser
from meta_train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
RESULTS = ROOT / "docs" / "results.md"

# What a run adds to its config when it exports: outcomes, not settings.
OUTCOMES = ("best_iteration", "best_return", "iterations_done", "max_kl_calibration")

ROW = re.compile(r"^\|\s*`(artifacts/[^`]+)`\s*\|\s*`(adaptctl train [^`]+)`\s*\|")


def shipped_artifacts() -> list[str]:
    found = sorted(ARTIFACTS.glob("*/metadata.json")) + sorted(
        ARTIFACTS.glob("comparators/*/metadata.json")
    )
    return [str(path.parent.relative_to(ROOT)) for path in found]


def documented_commands() -> dict[str, str]:
    """artifact directory -> the training command docs/results.md names for it."""
    rows = (ROW.match(line) for line in RESULTS.read_text().splitlines())
    return {row.group(1).rstrip("/"): row.group(2) for row in rows if row}


def config_of_command(command: str) -> TrainConfig:
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == "train" and args.config, f"not a training command: {command}"
    assert not args.resume, f"a shipped artifact's command trains from scratch: {command}"
    return TrainConfig.from_yaml(ROOT / args.config, _overrides(args.set))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def test_every_shipped_artifact_has_a_documented_command() -> None:
    commands = documented_commands()
    missing = [name for name in shipped_artifacts() if name not in commands]
    assert shipped_artifacts(), f"no shipped artifacts under {ARTIFACTS}"
    assert not missing, f"docs/results.md names no training command for {missing}"
    stale = sorted(set(commands) - set(shipped_artifacts()))
    assert not stale, f"docs/results.md names commands for artifacts not shipped: {stale}"


@pytest.mark.parametrize("artifact", shipped_artifacts())
def test_documented_command_reproduces_the_recorded_config(artifact: str) -> None:
    command = documented_commands().get(artifact)
    if command is None:
        pytest.fail(f"docs/results.md names no training command for {artifact}")
    metadata = json.loads((ROOT / artifact / "metadata.json").read_text())
    recorded = {k: v for k, v in metadata["training"].items() if k not in OUTCOMES}
    expected = flatten(json.loads(TrainConfig.model_validate(recorded).model_dump_json()))
    actual = flatten(json.loads(config_of_command(command).model_dump_json()))
    differences = {
        key: (expected.get(key), actual.get(key))
        for key in sorted(set(expected) | set(actual))
        if expected.get(key) != actual.get(key)
    }
    assert not differences, (
        f"`{command}` does not reproduce {artifact}; field: (recorded, from the command): "
        f"{differences}"
    )
