"""One name per concept: the inner step size is ``step_size`` (α), K is ``episodes_per_step``.

Older configs, run records and artifacts call them ``first_step_size`` and
``episodes_per_task``; they still load, a ``--set`` override under either name lands on the one
field, and a run started with the old names resumes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.adaptation import AdaptationSettings
from meta_train.config import ConfigError, EvalConfig, TrainConfig
from meta_train.rundir import same_config

ROOT = Path(__file__).resolve().parents[1]

OLD = {
    "family": "navigation2d",
    "episodes_per_task": 7,
    "meta": {"adaptation": {"first_step_size": 0.3, "later_step_size": 0.2}},
}
NEW = {
    "family": "navigation2d",
    "episodes_per_step": 7,
    "meta": {"adaptation": {"step_size": 0.3, "later_step_size": 0.2}},
}


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_adaptation_settings_read_the_old_name_and_write_the_new() -> None:
    settings = AdaptationSettings.model_validate({"first_step_size": 0.3})
    assert settings == AdaptationSettings(step_size=0.3)
    assert settings.step_sizes(3) == [0.3, 0.05, 0.05]
    assert "step_size" in settings.model_dump() and "first_step_size" not in settings.model_dump()


def test_old_and_new_config_files_give_thesame_config(tmp_path: Path) -> None:
    old = TrainConfig.from_yaml(write(tmp_path / "old.yaml", OLD))
    new = TrainConfig.from_yaml(write(tmp_path / "new.yaml", NEW))
    assert old == new
    assert (new.episodes_per_step, new.adaptation.step_size) == (7, 0.3)
    assert "episodes_per_task" not in new.model_dump()


@pytest.mark.parametrize("document", [OLD, NEW], ids=["old file", "new file"])
@pytest.mark.parametrize(
    "overrides",
    [
        {"episodes_per_task": 3, "meta.adaptation.first_step_size": 0.9},
        {"episodes_per_step": 3, "meta.adaptation.step_size": 0.9},
    ],
    ids=["old names", "new names"],
)
def test_overrides_under_either_name_land_on_the_one_field(
    tmp_path: Path, document: dict, overrides: dict
) -> None:
    config = TrainConfig.from_yaml(write(tmp_path / "c.yaml", document), overrides)
    assert (config.episodes_per_step, config.adaptation.step_size) == (3, 0.9)


def test_both_names_at_once_are_refused(tmp_path: Path) -> None:
    both = {**NEW, "episodes_per_task": 5}
    with pytest.raises(ConfigError, match="episodes_per_task"):
        TrainConfig.from_yaml(write(tmp_path / "both.yaml", both))


def test_a_run_recorded_with_the_old_names_resumes(tmp_path: Path) -> None:
    saved = write(tmp_path / "config.yaml", OLD)
    assert same_config(saved, TrainConfig.from_yaml(write(tmp_path / "new.yaml", NEW)))


def test_every_run_record_config_loads() -> None:
    records = sorted((ROOT / "records").glob("*/config.yaml"))
    for path in records:
        TrainConfig.from_yaml(path)


def test_the_evaluation_k_is_its_own_else_the_training_k() -> None:
    assert EvalConfig().resolved_episodes_per_step(20) == 20
    assert EvalConfig(episodes_per_step=40).resolved_episodes_per_step(20) == 40
