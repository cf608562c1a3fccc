"""meta_train.tasksets: the spread of a 40-task mean over task sets, on real navigation rollouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from controller.artifact import load_artifact, save_artifact
from meta_train import evaluate as ev
from meta_train.config import EvalConfig
from meta_train.export import fresh_artifact
from meta_train.paper import paper_test_tasks
from meta_train.tasksets import main, task_set_spread
from sim.families import get_family


def frozen_artifact(path: Path) -> Path:
    """A navigation policy that never moves (zero mean action, no noise): each episode's
    return is -100 x its goal's distance from the origin."""
    fresh = load_artifact(fresh_artifact(path / "fresh", "navigation2d", hidden_sizes=(8,)))
    params = {k: v.clone() for k, v in fresh.params.items()}
    params["mean.weight"].zero_()
    params["mean.bias"].zero_()
    params["log_std"] = torch.full_like(params["log_std"], -30.0)
    save_artifact(
        path / "frozen",
        fresh.spec,
        params,
        family="navigation2d",
        layout=fresh.metadata.layout,
        adaptation=fresh.metadata.adaptation,
    )
    return path / "frozen"


def standing_cost(tasks: list) -> float:
    return float(np.mean([-100 * np.hypot(*task.goal) for task in tasks]))


def test_each_row_is_the_set_it_names(tmp_path: Path) -> None:
    spread = task_set_spread(
        str(frozen_artifact(tmp_path)),
        sets=3,
        num_tasks=5,
        episodes_per_step=2,
        steps=0,
        first_seed=70,
    )
    family = get_family("navigation2d")
    assert spread.drawn.shape == (3, 1)
    for i, row in enumerate(spread.drawn):
        assert row[0] == pytest.approx(standing_cost(ev.test_tasks(family, 5, 70 + i)), rel=1e-4)
    assert spread.paper[0] == pytest.approx(standing_cost(paper_test_tasks(family, 5)), rel=1e-4)
    seeded = ev.test_tasks(family, 5, EvalConfig().task_seed)
    assert spread.seeded[0] == pytest.approx(standing_cost(seeded), rel=1e-4)
    assert len(set(spread.drawn[:, 0])) == 3  # three different draws


def test_cli_prints_the_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = str(frozen_artifact(tmp_path))
    assert main([artifact, "--sets", "2", "--num-tasks", "3", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "fresh sets: mean" in out and "after step 1 the authors' set is above" in out
    assert len([line for line in out.splitlines() if line.lstrip().startswith(("0 ", "1 "))]) == 2
    with pytest.raises(ValueError, match="at least 2"):
        task_set_spread(artifact, sets=1)
