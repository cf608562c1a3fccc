"""Meta-training runs end to end: config validation, resume, learning, evaluation, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from controller.adaptation import AdaptationSettings
from controller.artifact import load_artifact
from controller.policy import PolicySpec, SamplingPolicy, init_params, stack_params
from meta_train import evaluate as ev
from meta_train import report
from meta_train.cli import main
from meta_train.config import ConfigError, EvalConfig, TrainConfig
from meta_train.curves import direction_split
from meta_train.export import KL_BOUND_FACTOR, adaptation_kls
from meta_train.objective import adapted_params_for_tasks
from meta_train.paper import comparator_step_sizes, paper_test_tasks
from meta_train.rundir import RunDirError, load_checkpoint
from meta_train.trainer import iteration_seeds, policy_spec, run_iteration, train
from sim.episodes import Episodes
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import DirectionTask, GoalTask, VelocityTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(**overrides: object) -> TrainConfig:
    base = {
        "family": "navigation2d",
        "iterations": 4,
        "meta_batch_size": 4,
        "episodes_per_step": 4,
        "horizon": 20,
        "checkpoint_every": 2,
        "torch_threads": 1,
        "policy": {"hidden_sizes": [16, 16]},
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path: Path) -> None:
    config = TrainConfig.from_yaml(path)
    assert get_family(config.family).name == config.family


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("family: navigation2d\nmeta_batch: 20\n")
    with pytest.raises(ConfigError, match="meta_batch"):
        TrainConfig.from_yaml(path)
    path.write_text("family: navigation2d\nmeta: {trpo: {max_kl: -1}}\n")
    with pytest.raises(ConfigError, match=r"meta\.trpo\.max_kl"):
        TrainConfig.from_yaml(path)


def test_init_from_starts_the_run_from_an_artifacts_parameters(tmp_path: Path) -> None:
    from meta_train.export import fresh_artifact
    from meta_train.rundir import initial_params

    source = fresh_artifact(tmp_path / "src", "navigation2d", seed=7, hidden_sizes=(16, 16))
    config = tiny_config(init_from=str(source))
    spec = policy_spec(config, get_family(config.family))
    start = initial_params(config, spec)
    for name, value in load_artifact(source).params.items():
        assert torch.equal(start[name], value), name
    fresh = init_params(spec, config.seed)
    assert not torch.equal(start["hidden.0.weight"], fresh["hidden.0.weight"])
    state = train(config, tmp_path / "run", progress=False, max_iterations=1)
    moved = sum(float((state.params[k] - start[k]).abs().sum()) for k in start)
    to_fresh = sum(float((state.params[k] - fresh[k]).abs().sum()) for k in start)
    assert 0 < moved < to_fresh  # one TRPO step from the artifact, not from a fresh draw
    wide = fresh_artifact(tmp_path / "wide", "navigation2d", hidden_sizes=(8,))
    with pytest.raises(RunDirError, match="do not match this run's layout"):
        train(tiny_config(init_from=str(wide)), tmp_path / "other", progress=False)


def test_an_oracle_starts_from_a_policy_without_task_features(tmp_path: Path) -> None:
    from meta_train.export import fresh_artifact
    from meta_train.rundir import initial_params

    source = fresh_artifact(tmp_path / "src", "navigation2d", seed=7, hidden_sizes=(16, 16))
    config = tiny_config(mode="oracle", init_from=str(source))
    spec = policy_spec(config, get_family(config.family))
    given = load_artifact(source).params
    start = initial_params(config, spec)
    width = given["hidden.0.weight"].shape[1]
    assert start["hidden.0.weight"].shape[1] == spec.observation_size > width
    assert torch.equal(start["hidden.0.weight"][:, :width], given["hidden.0.weight"])
    assert not start["hidden.0.weight"][:, width:].any()  # acts as the given policy at first
    for name in given:
        if name != "hidden.0.weight":
            assert torch.equal(start[name], given[name]), name
    state = train(config, tmp_path / "run", progress=False, max_iterations=1)
    assert state.params["hidden.0.weight"][:, width:].any()  # and learns to use the task


def test_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    config = tiny_config()
    straight = train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False, max_iterations=2)
    with pytest.raises(RunDirError, match="--resume"):
        train(config, tmp_path / "b", progress=False)
    resumed = train(config, tmp_path / "b", resume=True, progress=False)
    assert resumed.iteration == straight.iteration == 4
    for name, value in straight.params.items():
        assert torch.equal(value, resumed.params[name]), name
    log_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")} for x in log_a]
    assert strip == [
        {k: v for k, v in json.loads(x).items() if not k.endswith("_s")} for x in log_b
    ]
    with pytest.raises(RunDirError, match="config differs"):
        train(tiny_config(seed=9), tmp_path / "b", resume=True, progress=False)
    extended = train(tiny_config(iterations=5), tmp_path / "b", resume=True, progress=False)
    assert extended.iteration == 5  # a finished run can be extended


def test_checkpoint_keeps_best_and_exports_artifact(tmp_path: Path) -> None:
    config = tiny_config()
    state = train(config, tmp_path, progress=False)
    saved = load_checkpoint(tmp_path, policy_spec(config, get_family(config.family)))
    assert saved.best_iteration == state.best_iteration
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert state.best_return == max(r["return_after"] for r in records)
    artifact = load_artifact(tmp_path / "artifact")
    assert artifact.metadata.family == "navigation2d"
    for name, value in state.best_params.items():
        assert torch.equal(artifact.params[name], value)
    # The KL bound is calibrated on the exported parameters' own steps, at the run's horizon.
    adaptation = artifact.metadata.adaptation
    assert adaptation.horizon == 20
    kls = adaptation_kls(get_family("navigation2d"), artifact.spec, artifact.params, adaptation)
    assert artifact.metadata.training["max_kl_calibration"]["kls"] == kls
    assert adaptation.max_kl == pytest.approx(KL_BOUND_FACTOR * max(kls))
    assert min(kls) > 0.0


def test_selection_window_keeps_the_best_trailing_mean(tmp_path: Path) -> None:
    config = tiny_config(iterations=6, selection_window=3)
    state = train(config, tmp_path, progress=False)
    returns = [
        json.loads(x)["return_after"] for x in (tmp_path / "log.jsonl").read_text().splitlines()
    ]
    scores = [np.mean(returns[max(0, i - 2) : i + 1]) for i in range(len(returns))]
    assert state.best_iteration == int(np.argmax(scores))
    assert state.best_return == pytest.approx(max(scores))
    # Resuming under another window rescores the kept iteration by the log; nothing else changes.
    resumed = train(
        tiny_config(iterations=6, selection_window=1), tmp_path, resume=True, progress=False
    )
    assert resumed.best_iteration == state.best_iteration
    assert resumed.best_return == pytest.approx(returns[state.best_iteration])


@pytest.mark.slow
def test_navigation_meta_training_improves_post_adaptation_return(tmp_path: Path) -> None:
    """A short 2D-navigation run: on held-out tasks, one step beats no step, and beats the
    untrained initialization's one-step return."""
    config = tiny_config(
        iterations=12,
        meta_batch_size=10,
        episodes_per_step=10,
        horizon=50,
        policy={"hidden_sizes": [32, 32]},
    )
    state = train(config, tmp_path, progress=False)
    family = get_family("navigation2d")
    tasks = ev.test_tasks(family, 10, seed=12345)
    sampler = BatchSampler(family, 1)
    artifact = load_artifact(tmp_path / "artifact")
    result = ev.evaluate_method(
        sampler,
        artifact.spec,
        state.params,
        tasks,
        10,
        [0.1],
        config.adaptation,
        seed=5,
        horizon=50,
    )
    before, after = result.mean
    assert after > before + 1.0, result.mean


def test_cli_train_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "nav.yaml"
    config.write_text(
        "family: navigation2d\niterations: 2\nmeta_batch_size: 3\nepisodes_per_step: 3\n"
        "horizon: 10\ntorch_threads: 1\npolicy: {hidden_sizes: [8]}\n"
        "evaluation: {num_tasks: 4, gradient_steps: 2}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    assert (
        main(
            [
                "eval",
                str(config),
                "--maml",
                str(run / "artifact"),
                "--random",
                "--out",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    document = json.loads((tmp_path / "res" / "navigation2d.json").read_text())
    assert set(document["methods"]) == {"maml", "random"}
    assert np.array(document["methods"]["maml"]["per_task"]).shape == (3, 4)
    assert (tmp_path / "res" / "navigation2d.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert (
        "paper in brackets" in printed and "step sizes: maml 0.1, 0.05; random 0.5, 0.25" in printed
    )
    assert document["provenance"]["random"]["step_sizes"] == [0.5, 0.25]

    def random_eval(out: str, *settings: str) -> dict:
        sets = [arg for setting in settings for arg in ("--set", setting)]
        assert main(["eval", str(config), "--random", *sets, "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "navigation2d.json").read_text())

    # the comparators' first step size, set for the evaluation (later steps half of it)
    document = random_eval("res2", "evaluation.comparator_step_size=0.1")
    assert document["provenance"]["random"]["step_sizes"] == [0.1, 0.05]
    assert "random 0.1, 0.05" in capsys.readouterr().out
    # the comparators' steps may change only some parameters: the same start, other steps
    restricted = random_eval(
        "res3",
        "evaluation.comparator_step_size=0.1",
        "evaluation.comparator_adapted_parameters=[hidden.0.bias]",
    )
    assert restricted["provenance"]["random"]["adapted_parameters"] == ["hidden.0.bias"]
    assert "steps change only: random hidden.0.bias" in capsys.readouterr().out
    full, only = (np.array(d["methods"]["random"]["per_task"]) for d in (document, restricted))
    assert np.array_equal(full[0], only[0]) and not np.allclose(full[1:], only[1:])
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 2  # exists: refuse
    # Extending the run from its own config.yaml: no config file, only --resume and --out.
    assert main(["train", "--resume", "--out", str(run), "--set", "iterations=3", "--quiet"]) == 0
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    assert main(["train", "--out", str(run)]) == 2


class RecordingSampler:
    """A BatchSampler that remembers each call's policy, seed and episodes."""

    def __init__(self, sampler: BatchSampler) -> None:
        self.sampler = sampler
        self.calls: list[tuple[SamplingPolicy, int, Episodes]] = []

    def sample(
        self,
        tasks,
        episodes_per_step,
        policy,
        seed,
        horizon=None,
        task_features=False,
        batch_unit="episodes",
    ):
        episodes = self.sampler.sample(
            tasks, episodes_per_step, policy, seed, horizon, task_features, batch_unit
        )
        self.calls.append((policy, seed, episodes))
        return episodes


def test_two_inner_steps_sample_each_round_with_the_policies_adapted_so_far() -> None:
    config = tiny_config(meta={"inner_steps": 2})
    family = get_family(config.family)
    spec = policy_spec(config, family)
    params = init_params(spec, 3)
    sampler = RecordingSampler(BatchSampler(family, 1))
    _, record = run_iteration(config, family, spec, sampler, params, iteration=5)
    seeds = iteration_seeds(config.seed, 5, inner_steps=2)
    assert {k: seeds[k] for k in iteration_seeds(config.seed, 5)} == iteration_seeds(config.seed, 5)
    assert len(set(seeds.values())) == 7  # the one-step seeds, then train_{reset,policy}_1
    (policy_0, seed_0, round_0), (policy_1, seed_1, round_1), (policy_2, seed_2, valid) = (
        sampler.calls
    )
    assert (seed_0, seed_1, seed_2) == (
        seeds["train_reset"],
        seeds["train_reset_1"],
        seeds["valid_reset"],
    )
    assert policy_1.seed == seeds["train_policy_1"] and policy_2.seed == seeds["valid_policy"]
    theta_1 = stack_params(adapted_params_for_tasks(spec, params, [round_0], config.meta))
    theta_2 = stack_params(adapted_params_for_tasks(spec, params, [round_0, round_1], config.meta))
    for name in params:
        assert torch.equal(policy_0.params[name], params[name])
        assert torch.equal(policy_1.params[name], theta_1[name])
        assert torch.equal(policy_2.params[name], theta_2[name])
    assert record["inner_returns"] == [
        float(round_0.returns().mean()),
        float(round_1.returns().mean()),
    ]
    assert record["return_before"] == record["inner_returns"][0]
    assert record["return_after"] == float(valid.returns().mean())


def test_two_inner_step_training_run_completes_and_logs_inner_returns(tmp_path: Path) -> None:
    config = tiny_config(iterations=2, meta={"inner_steps": 2})
    state = train(config, tmp_path, progress=False)
    assert state.iteration == 2
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]
    for r in records:
        assert len(r["inner_returns"]) == 2 and np.all(np.isfinite(r["inner_returns"]))
        assert r["inner_returns"][0] == r["return_before"] and np.isfinite(r["return_after"])
    assert "inner_steps: 2" in (tmp_path / "config.yaml").read_text()
    assert load_artifact(tmp_path / "artifact").metadata.training["meta"]["inner_steps"] == 2


def test_a_run_that_adapts_the_first_layer_biases_ships_that_step(tmp_path: Path) -> None:
    only = ["hidden.0.bias"]
    config = tiny_config(iterations=2, meta={"adaptation": {"adapted_parameters": only}})
    train(config, tmp_path, progress=False)
    artifact = load_artifact(tmp_path / "artifact")
    assert artifact.metadata.adaptation.settings.adapted_parameters == ("hidden.0.bias",)
    assert artifact.metadata.format_version == 2
    # What meta-training adapted, the artifact's users adapt: the same step, the same names.
    family = get_family("navigation2d")
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    episodes = BatchSampler(family, 1).sample(
        tasks, 4, SamplingPolicy(artifact.spec, artifact.params, 0), 1, 20
    )
    theta = adapted_params_for_tasks(artifact.spec, artifact.params, episodes, config.meta)[0]
    moved = [n for n in theta if not torch.equal(theta[n], artifact.params[n])]
    assert moved == ["hidden.0.bias"]
    with pytest.raises(ValidationError, match="adapted_parameters applies to mode 'maml' only"):
        tiny_config(mode="pretrained", meta={"adaptation": {"adapted_parameters": only}})
    with pytest.raises(ValidationError, match=r"\['hidden.2.bias'\] are not parameters"):
        tiny_config(meta={"adaptation": {"adapted_parameters": ["hidden.2.bias"]}})
    # a comparator's fine-tuning may be restricted too, in any mode, to names that exist
    assert tiny_config(
        mode="pretrained", evaluation={"comparator_adapted_parameters": only}
    ).evaluation.comparator_adapted_parameters == ("hidden.0.bias",)
    with pytest.raises(ValidationError, match=r"comparator_adapted_parameters \['bias'\] are not"):
        tiny_config(evaluation={"comparator_adapted_parameters": ["bias"]})
    with pytest.raises(ValidationError, match="comparator_adapted_parameters is empty"):
        tiny_config(evaluation={"comparator_adapted_parameters": []})


def test_a_run_saved_before_a_new_config_field_resumes(tmp_path: Path) -> None:
    """A config.yaml written before ``meta.inner_steps`` existed means its default, 1."""
    config = tiny_config(iterations=2)
    train(config, tmp_path, progress=False, max_iterations=1)
    saved = tmp_path / "config.yaml"
    saved.write_text(saved.read_text().replace("  inner_steps: 1\n", ""))
    assert "inner_steps" not in saved.read_text()
    assert train(config, tmp_path, resume=True, progress=False).iteration == 2
    with pytest.raises(RunDirError, match="config differs"):
        train(
            tiny_config(iterations=2, meta={"inner_steps": 2}),
            tmp_path,
            resume=True,
            progress=False,
        )


def test_curves_plot_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(tiny_config(iterations=2), tmp_path / "run", progress=False)
    out = tmp_path / "curves.png"
    assert main(["curves", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["curves", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no training log" in capsys.readouterr().err


def test_direction_split_fits_returns_to_each_iterations_task_draw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(
        family="cheetah_direction",
        iterations=3,
        horizon=5,
        episodes_per_step=2,
        meta_batch_size=8,
        seed=4,
    )
    run = tmp_path / "run"
    train(config, run, progress=False)
    # Replace the logged returns by 500 per backward task and 100 per forward one.
    family = get_family("cheetah_direction")
    records = []
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        seeds = iteration_seeds(4, record["iteration"])
        tasks = family.sample_tasks(np.random.default_rng(seeds["tasks"]), 8)
        record["return_after"] = float(np.mean([500 if t.direction < 0 else 100 for t in tasks]))
        records.append(json.dumps(record))
    (run / "log.jsonl").write_text("\n".join(records) + "\n")
    assert main(["curves", str(run), "--by-direction"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[0] == "0-2" and [float(x) for x in row[1:4]] == [500.0, 100.0, 300.0]
    train(tiny_config(iterations=1), tmp_path / "nav", progress=False)
    with pytest.raises(ValueError, match="not a direction family"):
        direction_split(tmp_path / "nav")


@pytest.mark.parametrize("mode", ["pretrained", "oracle"])
def test_comparators_train_with_the_same_loop(tmp_path: Path, mode: str) -> None:
    config = tiny_config(mode=mode, iterations=3)
    train(config, tmp_path, progress=False)
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for record in records:  # no adaptation: the loop's return is the sampled one
        assert record["return_after"] == record["return_before"]
        assert record["kl"] <= config.meta.trpo.max_kl
    assert any(r["accepted"] for r in records)
    artifact = load_artifact(tmp_path / "artifact")
    extra = 2 if mode == "oracle" else 0  # the oracle also sees the goal (x, y)
    assert artifact.layout.observation_size == 2 + extra
    # The oracle never adapts: its artifact keeps the controller's default KL bound.
    calibrated = artifact.metadata.adaptation.max_kl is not None
    assert calibrated == (mode != "oracle")


def test_evaluation_reports_the_velocity_error_of_velocity_tasks(tmp_path: Path) -> None:
    family = get_family("cheetah_velocity")
    spec = PolicySpec(
        observation_size=family.observation_size, action_size=family.action_size, hidden_sizes=(8,)
    )
    params = init_params(spec, 0)
    tasks = [VelocityTask(0.3), VelocityTask(1.7)]
    sampler = BatchSampler(family, 1)
    result = ev.evaluate_method(
        sampler, spec, params, tasks, 2, [0.1], AdaptationSettings(), seed=3, horizon=10
    )
    assert result.velocity_errors is not None and result.velocity_errors.shape == (2, 2)
    # Step 0 by hand: the same episodes (same policy seed and sampling seed) as the method's.
    episodes = sampler.sample(tasks, 2, SamplingPolicy(spec, stack_params([params] * 2), 3), 3, 10)
    by_hand = [
        np.abs(episodes.infos["x_velocity"][i] - t.velocity).mean() for i, t in enumerate(tasks)
    ]
    np.testing.assert_allclose(result.velocity_errors[0], by_hand, rtol=1e-6)
    assert result.velocities is not None
    velocity = episodes.infos["x_velocity"].mean(axis=(1, 2))
    np.testing.assert_allclose(result.velocities[0], velocity, rtol=1e-6)
    document = report.results_document(family, tasks, {"maml": result}, {})
    assert len(document["methods"]["maml"]["velocity_error"]["mean"]) == 2
    assert "mean |v - v*|" in report.format_table(document)
    report.write_results(document, tmp_path)
    assert (tmp_path / "cheetah_velocity_tracking.png").stat().st_size > 1000
    navigation = get_family("navigation2d")
    goals = ev.test_tasks(navigation, 2, seed=1)
    nav_spec = PolicySpec(observation_size=2, action_size=2, hidden_sizes=(8,))
    nav = ev.evaluate_method(
        BatchSampler(navigation, 1),
        nav_spec,
        init_params(nav_spec, 0),
        goals,
        2,
        [0.1],
        AdaptationSettings(),
        seed=3,
        horizon=5,
    )
    assert nav.velocity_errors is None


def test_paper_test_tasks_are_the_authors_draws() -> None:
    # MT19937 seeded with 1 (np.random.seed(1)) first yields 0.417022..., 0.720324..., ...
    first, second = 0.417022004702574, 0.7203244934421581
    velocity = paper_test_tasks(get_family("cheetah_velocity"), 40)
    assert velocity[0] == VelocityTask(pytest.approx(2.0 * first))
    assert velocity[1] == VelocityTask(pytest.approx(2.0 * second))
    nav = paper_test_tasks(get_family("navigation2d"), 40)
    assert nav[0] == GoalTask((pytest.approx(first - 0.5), pytest.approx(second - 0.5)))
    assert len(set(nav)) == 40 and paper_test_tasks(get_family("navigation2d"), 3) == nav[:3]
    # the direction script turns the same velocity draw into a direction: backward below 1.0
    direction = paper_test_tasks(get_family("cheetah_direction"), 40)
    assert [t.direction for t in direction] == [-1 if t.velocity < 1.0 else 1 for t in velocity]
    assert sum(t.direction == -1 for t in direction) == 22
    # ant direction: its script seeds 2 and splits at 1.5 (of U[0, 3])
    ant = paper_test_tasks(get_family("ant_direction"), 40)
    assert ant[0] == DirectionTask(-1 if 3.0 * 0.43599490214200376 < 1.5 else 1)


def test_evaluation_tasks_follow_the_config() -> None:
    family = get_family("navigation2d")
    paper = ev.evaluation_tasks(family, EvalConfig())
    assert paper == paper_test_tasks(family, 40)
    seeded = ev.evaluation_tasks(family, EvalConfig(tasks="seeded", task_seed=5, num_tasks=7))
    assert seeded == ev.test_tasks(family, 7, 5) and seeded != paper[:7]
    with pytest.raises(ValueError, match="tasks"):
        EvalConfig(tasks="authors")  # type: ignore[arg-type]
    renamed = dataclasses.replace(family, name="my_family")
    with pytest.raises(ValueError, match=r"'my_family'.*evaluation\.tasks: seeded"):
        ev.evaluation_tasks(renamed, EvalConfig())
    assert len(ev.evaluation_tasks(renamed, EvalConfig(tasks="seeded"))) == 40


def test_comparators_halve_their_step_after_the_first_as_the_authors_scripts() -> None:
    # test_maml_cheetah.py: init_learning_rate 0.02 (pretrained), then learning_rate 0.5 x 0.02
    assert comparator_step_sizes("cheetah_velocity", "pretrained", 3) == [0.02, 0.01, 0.01]
    # test_maml_point.py fine-tunes random and pretrained with 0.5 (four steps reported)
    assert comparator_step_sizes("navigation2d", "random", 4) == [0.5, 0.25, 0.25, 0.25]
    assert comparator_step_sizes("cheetah_direction", "random", 1) == [1.0]


def test_curves_table_averages_windows_of_the_log(tmp_path: Path) -> None:
    from meta_train.curves import window_table

    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "iteration": i,
            "return_before": float(i),
            "return_after": float(i) + 2.0,
            "total_s": 1.0,
            **({"length_after": 100.0 + i} if i >= 2 else {}),
        }
        for i in range(5)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = window_table(run, window=2).splitlines()
    assert table[2] == "| 0-1 | 0.5 | 2.5 | +2.0 | — | 1.0 |"  # no lengths logged there
    assert table[3] == "| 2-3 | 2.5 | 4.5 | +2.0 | 102 | 1.0 |"
    assert table[4] == "| 4-4 | 4.0 | 6.0 | +2.0 | 104 | 1.0 |"


def test_a_run_counting_steps_takes_more_episodes_where_they_end_early(tmp_path: Path) -> None:
    # Ant episodes end when the torso leaves its healthy height: a batch of K x H steps then
    # holds more than K episodes, and the artifact tells the runtime how its K is counted
    config = tiny_config(
        family="ant_velocity",
        iterations=1,
        meta_batch_size=2,
        episodes_per_step=2,
        horizon=200,
        batch_unit="steps",
        policy={"hidden_sizes": [8], "init_log_std": 1.0},
    )
    train(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert record["episodes_before"] > 2
    assert 0 < record["length_before"] < 200
    assert load_artifact(tmp_path / "artifact").metadata.adaptation.batch_unit == "steps"
    assert TrainConfig.model_validate({"family": "ant_velocity"}).batch_unit == "episodes"


def test_the_loop_takes_ray_samplers_inner_steps_and_terms_where_its_episodes_are() -> None:
    # the loop picks its path by this protocol: a sampler that lost a method would silently
    # fall back to the driver's inner steps and meta-step
    from meta_train.ray_sampler import RaySampler
    from meta_train.samplers import KeepingSampler, OneTorchThreadSampler

    assert issubclass(RaySampler, KeepingSampler)
    assert not issubclass(OneTorchThreadSampler, KeepingSampler)


def test_the_report_gives_the_share_of_the_pretrained_to_oracle_gap_maml_closes() -> None:
    means = {"maml": [10.0, 70.0], "pretrained": [40.0, 50.0], "oracle": [100.0], "random": [0.0]}
    shares = report.gap_closed(means)
    assert shares == pytest.approx({"vs_pretrained_step0": 0.5, "vs_pretrained_step1": 0.4})
    document = {
        "family": "cheetah_damage",
        "num_tasks": 2,
        "methods": {n: {"mean": m, "stderr": [0.0] * len(m)} for n, m in means.items()},
        "gap_closed": shares,
        "paper": {},
    }
    assert "0.50 of it against pretrained at step 0; 0.40" in report.format_table(document)
    assert report.gap_closed({"maml": [1.0, 2.0], "pretrained": [0.0, 1.0]}) == {}
