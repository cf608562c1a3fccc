"""The damaged robot end to end: a 1-iteration cheetah_damage artifact, ``adaptctl run`` with a
body, and a deployment that is damaged mid-way, noticed by the Controller's monitor and re-adapted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller import Controller, ControllerConfig
from controller.monitor import MonitorSettings
from controller.recovery import deploy, format_deployment
from meta_train.cli import main
from meta_train.config import TrainConfig
from meta_train.evaluate import evaluation_tasks
from sim.families import get_family
from sim.tasks import BodySpace, BodyTask

ROOT = Path(__file__).resolve().parents[1]
K, HORIZON = 2, 20
# A monitor that flags any episode below the reference median: a drop is noticed within a few
# episodes of the damage whatever the (untrained) policy's returns do.
TOUCHY = "monitor={window: 6, slack_sd: 0, decision_sd: 0.001, revert_z: null}"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    code = main(
        [
            "train",
            str(ROOT / "configs" / "cheetah_damage.yaml"),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "iterations=1",
            "--set",
            "meta_batch_size=2",
            "--set",
            f"episodes_per_step={K}",
            "--set",
            f"horizon={HORIZON}",
            "--set",
            "policy.hidden_sizes=[16, 16]",
        ]
    )
    assert code == 0
    return out / "artifact"


def test_run_with_damage_at_notices_the_drop_and_adapts(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(artifact),
            "--motor",
            "bthigh=0",
            "--payload",
            "2.5",
            "--damage-at",
            "6",
            "--episodes",
            "16",
            "--out",
            str(out),
            "--json",
            "--set",
            "max_kl=1e6",
            "--set",
            TOUCHY,
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["damaged"]["motor_gains"][0] == 0.0 and document["damaged"]["payload_kg"] == 2.5
    assert document["summary"]["false_alarms"] == 0 and not document["summary"]["reverted"]
    kinds = [event["kind"] for event in document["events"]]
    assert kinds[:2] == ["drop", "adapted"]
    summary = document["summary"]
    assert 1 <= summary["recovery_episodes"] <= 2 * K + 1  # K episodes, plus those to notice
    assert summary["recovery_robot_s"] == pytest.approx(
        summary["recovery_episodes"] * HORIZON * 0.05
    )
    episodes = document["episodes"]
    assert [e["damaged"] for e in episodes] == [i >= 6 for i in range(16)]
    assert all(e["adaptation_steps"] == 0 for e in episodes[:7])
    assert episodes[-1]["adaptation_steps"] >= 1  # the adapted policy serves at the end
    assert (out / "recovery.png").stat().st_size > 0 and (out / "result.json").exists()
    main(
        [
            "run",
            str(artifact),
            "--motor",
            "bthigh=0",
            "--payload",
            "2.5",
            "--damage-at",
            "6",
            "--episodes",
            "16",
            "--out",
            str(out),
            "--json",
            "--set",
            "max_kl=1e6",
            "--set",
            TOUCHY,
        ]
    )
    again = json.loads(capsys.readouterr().out)  # not resumed from a journal of the first run
    for key in ("episode_return", "adaptation_steps"):
        assert [e[key] for e in again["episodes"]] == [e[key] for e in episodes]


def test_run_with_a_body_runs_the_sim_loop(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            str(artifact),
            "--motor",
            "fshin=0.5",
            "--friction",
            "0.5",
            "--out",
            str(tmp_path),
            "--set",
            "max_kl=1e6",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "initialization" in printed and "after 1 step" in printed
    assert "motors fshin x0.5; friction x0.5" in printed  # motors by name
    assert (tmp_path / "adaptation.png").exists()
    code = main(["run", str(artifact), "--payload", "5", "--out", str(tmp_path)])
    assert code == 0
    assert "outside the training range" in capsys.readouterr().out  # 5 kg > half the torso


def test_bad_bodies_are_refused_by_name(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(artifact), "--motor", "knee=0", "--out", str(tmp_path)]) == 2
    assert "unknown motor 'knee'" in capsys.readouterr().err
    assert main(["run", str(artifact), "--motor", "bthigh", "--out", str(tmp_path)]) == 2
    assert "NAME=GAIN" in capsys.readouterr().err
    velocity = tmp_path / "velocity"
    from meta_train.export import fresh_artifact

    fresh_artifact(velocity, "cheetah_velocity", hidden_sizes=(8,))
    assert main(["run", str(velocity), "--payload", "1", "--out", str(tmp_path)]) == 2
    assert "damage family" in capsys.readouterr().err


def test_deploy_without_a_drop_keeps_the_initialization(artifact: Path) -> None:
    settings = MonitorSettings(window=4, decision_sd=50.0)
    config = ControllerConfig(seed=0, monitor=settings, max_kl=1e6)
    space = get_family("cheetah_damage").task_space
    assert isinstance(space, BodySpace)
    with Controller.load(artifact, config) as controller:
        result = deploy(controller, space.make(payload_kg=1.0), damage_at=3, episodes=8)
    assert result.events == [] and result.summary()["recovery_episodes"] is None
    assert "never served" in format_deployment(result)
    assert np.isfinite([e.episode_return for e in result.episodes]).all()


def test_evaluation_draws_held_out_bodies_inside_and_outside_the_training_range() -> None:
    config = TrainConfig.from_yaml(ROOT / "configs" / "cheetah_damage.yaml")
    family = get_family(config.family)
    space = family.task_space
    assert isinstance(space, BodySpace)
    held_out = evaluation_tasks(family, config.evaluation)
    assert len(held_out) == 40 and not any(space.outside_training(t) for t in held_out)
    ood = config.evaluation.model_copy(update={"tasks": "out_of_distribution"})
    beyond = evaluation_tasks(family, ood)
    assert len(beyond) == 40 and all(space.outside_training(t) for t in beyond)
    with pytest.raises(ValueError, match="seeded"):
        evaluation_tasks(get_family("cheetah_velocity"), ood)
    dead = evaluation_tasks(family, config.evaluation.model_copy(update={"tasks": "dead_motor"}))
    assert not any(space.outside_training(t) for t in dead)
    # one dead motor per body, each of the six dead in 40 // 6 or 40 // 6 + 1 of them
    gains = np.array([t.motor_gains for t in dead if isinstance(t, BodyTask)])
    assert gains.shape == (40, 6) and set(gains.ravel()) == {0.0, 1.0}
    assert set((gains == 0).sum(axis=0)) == {6, 7} and (gains == 0).sum(axis=1).tolist() == [1] * 40
    # payload and friction vary as in training
    assert len({t.payload_kg for t in dead if isinstance(t, BodyTask)}) == 40


@pytest.mark.timeout(240)
def test_sim_robot_takes_the_body_flags(artifact: Path, tmp_path: Path) -> None:
    from link_support import server_process, sim_robot_process

    from controller.link.server import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    with server_process(artifact, endpoint, tmp_path / "journal", "--set", "max_kl=1e6"):
        robot = sim_robot_process(
            endpoint,
            *("--motor", "bthigh=0", "--payload", "1.5", "--friction", "0.5"),
            *("--episodes", str(K), "--adapted-episodes", "1", "--json"),
        )
    assert robot.returncode == 0, robot.stderr
    result = json.loads(robot.stdout)
    assert result["task"] == {
        "kind": "body",
        "motor_gains": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "payload_kg": 1.5,
        "friction_scale": 0.5,
    }
    assert len(result["result"]["before"]) == K and len(result["result"]["after"]) == 1


def test_a_robot_over_the_link_is_recovered_by_a_monitoring_server() -> None:
    """``adaptctl sim-robot --damage-at`` against ``adaptctl serve --monitor``, in process: the
    robot never sends ADAPT; the server notices the drop and adapts by itself."""
    from shipped import ARTIFACTS, finished_artifact

    from controller import load_artifact
    from controller.link.lanes import Lanes
    from controller.link.server import LinkServer
    from controller.link.sim_robot import run_sim_robot_deployment

    usable, reason = finished_artifact("cheetah_damage")
    if not usable:
        pytest.skip(reason)
    family = get_family("cheetah_damage")
    body = family.task_space.make({"bthigh": 0.0, "fthigh": 0.0}, 0.0, 1.0)
    monitor = MonitorSettings(window=8, revert_z=None)
    config = ControllerConfig(seed=0, journal=False, episodes_per_step=4, monitor=monitor)
    lanes = Lanes(load_artifact(ARTIFACTS / "cheetah_damage"), config)
    with LinkServer(lanes, "tcp://127.0.0.1:*").start() as server:
        result = run_sim_robot_deployment(server.endpoint, family, body, 12, 24, horizon=50)
    summary = result.summary()
    assert summary["false_alarms"] == 0, summary
    assert summary["return_damaged"] < summary["return_healthy"] - 50, summary
    noticed, adapted = summary["drop_noticed_after"], summary["adapted_policy_from"]
    assert noticed is not None and noticed <= 4, summary
    assert adapted is not None and noticed < adapted <= noticed + 4 + 2, summary
    served = {e.policy_id for e in result.episodes[11 + adapted :]}
    assert len(served) == 1 and served != {result.episodes[0].policy_id}


def test_sim_robot_deployment_needs_a_monitoring_server() -> None:
    from shipped import ARTIFACTS, finished_artifact

    from controller import load_artifact
    from controller.link.lanes import Lanes
    from controller.link.server import LinkServer
    from controller.link.sim_robot import run_sim_robot_deployment

    usable, reason = finished_artifact("cheetah_damage")
    if not usable:
        pytest.skip(reason)
    family = get_family("cheetah_damage")
    body = family.task_space.make({"bthigh": 0.0}, 0.0, 1.0)
    lanes = Lanes(load_artifact(ARTIFACTS / "cheetah_damage"), ControllerConfig(journal=False))
    with LinkServer(lanes, "tcp://127.0.0.1:*").start() as server:
        with pytest.raises(ValueError, match="--monitor"):
            run_sim_robot_deployment(server.endpoint, family, body, 2, 4, horizon=10)
        with pytest.raises(ValueError, match="damage-at"):
            run_sim_robot_deployment(server.endpoint, family, body, 4, 4, horizon=10)
