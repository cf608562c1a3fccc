"""The Ray sampling backend: same episodes as the local sampler at 1 and 2 workers,
recovery from a worker that dies mid-call, the error without Ray, and a short training run.

Runs against a local Ray instance started here (2 CPUs, small object store) and shut down at
the end of the module. Tolerances: docs/scaling.md, "Determinism".
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from controller.policy import Params, PolicySpec, SamplingPolicy, init_params, stack_params
from controller.threads import torch_threads
from meta_train.config import ConfigError, TrainConfig
from meta_train.objective import MetaSettings, adapted_params_for_tasks
from meta_train.ray_sampler import (
    RaySampler,
    RayUnavailableError,
    concatenate_episodes,
    contiguous_shards,
)
from meta_train.samplers import make_sampler
from meta_train.shard import MetaShard, ShardSum, meta_totals
from meta_train.trainer import train
from sim.episodes import Episodes
from sim.families import Family, get_family
from sim.sampler import BatchSampler, _PerTaskGenerator

# A policy mean that differs in its last bit (BLAS picking another kernel for another row
# count) moves a 2D-navigation point by < 1e-7 a step: < 1e-5 over its 100 steps.
NAVIGATION_ATOL = 1e-5
FLOATS = ("observations", "actions", "rewards")


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False
    )
    yield ray
    ray.shutdown()


def _policy_params(family: Family, num_tasks: int, stacked: bool) -> tuple[PolicySpec, Params]:
    spec = PolicySpec(observation_size=family.observation_size, action_size=family.action_size)
    if not stacked:
        return spec, init_params(spec, 0)
    return spec, stack_params([init_params(spec, seed) for seed in range(num_tasks)])


def _assert_same(expected: Episodes, actual: Episodes, atol: float = 0.0) -> None:
    assert list(actual.tasks) == list(expected.tasks)
    np.testing.assert_array_equal(actual.valid, expected.valid)
    np.testing.assert_array_equal(actual.terminated, expected.terminated)
    # the reset comes from the task's own stream alone: exact whatever the sharding
    np.testing.assert_array_equal(actual.observations[:, :, 0], expected.observations[:, :, 0])
    for name in FLOATS:
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), 0, atol, name)
    for store in ("reward_terms", "infos"):
        left, right = getattr(expected, store), getattr(actual, store)
        assert left.keys() == right.keys()
        for key in left:
            np.testing.assert_allclose(right[key], left[key], 0, atol, f"{store}[{key}]")


def test_shards_sampled_apart_join_into_the_batch() -> None:
    """Per-task randomness without Ray: tasks 0:2 and 2:5 sampled apart give the whole batch."""
    family = get_family("cheetah_velocity")
    tasks = family.sample_tasks(np.random.default_rng(3), 5)
    spec, params = _policy_params(family, 5, stacked=True)
    policy = SamplingPolicy(spec, params, seed=11)
    sampler = BatchSampler(family, num_threads=1)
    whole = sampler.sample(tasks, 4, policy, seed=5, horizon=15)
    parts = [
        sampler.sample(tasks[a:b], 4, policy.shard(a, b), 5, 15, task_offset=a)
        for a, b in ((0, 2), (2, 5))
    ]
    _assert_same(whole, concatenate_episodes(parts))  # stacked: bit for bit
    other_seed = sampler.sample(tasks, 4, SamplingPolicy(spec, params, seed=11), seed=6, horizon=15)
    assert not np.array_equal(other_seed.observations[:, :, 0], whole.observations[:, :, 0])
    with pytest.raises(ValueError, match="cannot take tasks"):
        policy.shard(3, 6)


def test_step_counted_shards_join_into_the_batch_with_padding() -> None:
    """A batch counted in steps gives shards different widths; joined, they are the batch."""
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(3), 4)
    spec, params = _policy_params(family, 4, stacked=True)
    policy = SamplingPolicy(spec, params, seed=11)
    sampler = BatchSampler(family, num_threads=1)
    whole = sampler.sample(tasks, 2, policy, seed=5, horizon=200, batch_unit="steps")
    parts = [
        sampler.sample(tasks[a:b], 2, policy.shard(a, b), 5, 200, batch_unit="steps", task_offset=a)
        for a, b in ((0, 1), (1, 4))
    ]
    assert len({p.episodes_per_task for p in parts}) == 2, "the shards should differ in width"
    _assert_same(whole, concatenate_episodes(parts))


def test_reset_streams_are_the_tasks_own() -> None:
    streams = _PerTaskGenerator(seed=5, task_ids=[3, 4], episodes_per_step=2)
    drawn = streams.uniform(-1.0, 1.0, size=(4, 3))
    for row, task in ((0, 3), (2, 4)):
        own = np.random.default_rng(np.random.SeedSequence([5, task])).uniform(-1, 1, (2, 3))
        np.testing.assert_array_equal(drawn[row : row + 2], own)
    with pytest.raises(ValueError, match="first entry is the 4 simulations"):
        streams.standard_normal(size=(3, 2))


def test_contiguous_shards_cover_the_tasks_in_order() -> None:
    assert contiguous_shards(40, 2) == [(0, 20), (20, 40)]
    assert contiguous_shards(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert contiguous_shards(2, 4) == [(0, 1), (1, 2)]  # no empty shards
    for tasks in range(1, 12):
        for workers in range(1, 6):
            shards = contiguous_shards(tasks, workers)
            assert [a for a, _ in shards] == [0] + [b for _, b in shards[:-1]]
            assert shards[-1][1] == tasks and all(b > a for a, b in shards)


@pytest.mark.parametrize(
    ("family_name", "num_tasks", "episodes", "horizon", "atol"),
    [
        # 2D navigation, 3 episodes: shards of 6 or 9 rows may get another BLAS kernel than
        # the local 15 rows; the tolerance covers it.
        ("navigation2d", 5, 3, 100, NAVIGATION_ATOL),
        # HalfCheetah is chaotic (a last-bit change grows to O(1) within 25 steps): bit for
        # bit, as every shard has >= 12 rows per policy call (docs/scaling.md, "Determinism").
        ("cheetah_velocity", 3, 20, 30, 0.0),
    ],
    ids=["navigation2d", "cheetah_velocity"],
)
def test_ray_gives_the_local_episodes_at_1_and_2_workers(
    ray_instance: Any, family_name: str, num_tasks: int, episodes: int, horizon: int, atol: float
) -> None:
    family = get_family(family_name)
    tasks = family.sample_tasks(np.random.default_rng(1), num_tasks)
    local_sampler = BatchSampler(family, num_threads=2)
    for workers in (1, 2):
        sampler = RaySampler(family, workers, num_threads=1)
        try:
            for stacked in (False, True):  # one parameter set for all tasks; one per task
                spec, params = _policy_params(family, num_tasks, stacked)
                local, remote = (
                    s.sample(tasks, episodes, SamplingPolicy(spec, params, 9), 4, horizon)
                    for s in (local_sampler, sampler)
                )
                _assert_same(local, remote, atol)
                assert remote.observations.flags.writeable  # owned, not object-store views
        finally:
            sampler.close()


def test_a_worker_that_dies_mid_call_is_replaced_and_its_shard_rerun(ray_instance: Any) -> None:
    family = get_family("cheetah_velocity")
    tasks = family.sample_tasks(np.random.default_rng(2), 4)
    spec, params = _policy_params(family, 4, stacked=False)

    def policy() -> SamplingPolicy:
        return SamplingPolicy(spec, params, 21)

    sampler = RaySampler(family, 2, num_threads=1)
    try:
        undisturbed = sampler.sample(tasks, 20, policy(), seed=8, horizon=100)
        pids = [ray_instance.get(w.pid.remote()) for w in sampler.workers]

        submission = sampler.submit(tasks, 20, policy(), seed=8, horizon=100)
        ready, _ = ray_instance.wait(submission.refs[1:], timeout=0)
        assert not ready, "the shard finished before the kill: make it longer"
        ray_instance.kill(sampler.workers[1])  # Ray stops the actor
        _assert_same(undisturbed, sampler.gather(submission))
        assert sampler.replacements == 1

        submission = sampler.submit(tasks, 20, policy(), seed=8, horizon=100)
        os.kill(pids[0], signal.SIGKILL)  # the worker's process crashes
        _assert_same(undisturbed, sampler.gather(submission))
        assert sampler.replacements == 2
        new_pids = [ray_instance.get(w.pid.remote()) for w in sampler.workers]
        assert not set(new_pids) & set(pids)
    finally:
        sampler.close()


def test_only_a_fresh_sampling_policy_travels(ray_instance: Any) -> None:
    family = get_family("navigation2d")
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    spec, params = _policy_params(family, 2, stacked=False)
    sampler = RaySampler(family, 1, num_threads=1)
    try:
        used = SamplingPolicy(spec, params, 0)
        used(np.zeros((2, 1, 2), np.float32))
        with pytest.raises(ValueError, match="fresh SamplingPolicy"):
            sampler.sample(tasks, 2, used, seed=0, horizon=5)
        with pytest.raises(TypeError, match="needs a SamplingPolicy"):
            sampler.sample(tasks, 2, lambda obs: obs, seed=0, horizon=5)  # type: ignore[arg-type]
        stacked = SamplingPolicy(spec, stack_params([params] * 3), 0)
        with pytest.raises(ValueError, match="policy for 3"):
            sampler.sample(tasks, 2, stacked, seed=0, horizon=5)
    finally:
        sampler.close()


def _local_and_ray_terms(sampler: RaySampler, family: Family, settings: MetaSettings):
    """The meta-step's terms on one meta-batch sampled by ``sampler``: here, and on its workers."""
    tasks = family.sample_tasks(np.random.default_rng(5), 4)
    spec = PolicySpec(
        observation_size=family.observation_size,
        action_size=family.action_size,
        hidden_sizes=(16,),
    )
    params = init_params(spec, 0)
    train = sampler.sample(tasks, 3, SamplingPolicy(spec, params, 1), 2, horizon=30)
    adapted = stack_params(adapted_params_for_tasks(spec, params, train, settings))
    valid = sampler.sample(tasks, 3, SamplingPolicy(spec, adapted, 3), 4, horizon=30)
    totals = meta_totals(valid, settings)
    local = ShardSum([MetaShard(spec, params, [train], valid, settings, totals)])
    return local, sampler.meta_terms(spec, params, [train], valid, settings), train, valid


def _assert_same_terms(local: Any, remote: Any) -> None:
    # the workers' per-task terms, added here in task order: the local bits (workers of one
    # thread; here one thread too, for the same kernels)
    with torch_threads(1):
        _assert_same_terms_here(local, remote)


def _assert_same_terms_here(local: Any, remote: Any) -> None:
    (g_local, v_local), (g_remote, v_remote) = local.gradient(), remote.gradient()
    assert torch.equal(g_remote, g_local) and v_remote == v_local
    v = torch.randn(g_local.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(remote.hvp(v), local.hvp(v))
    flat = torch.cat([p.reshape(-1) for p in local.shards[0].theta.values()]).detach()
    flat = flat - 1e-3 * g_local
    assert remote.evaluate(flat) == local.evaluate(flat)


def test_meta_step_terms_on_the_workers_add_up_to_the_local_ones(ray_instance: Any) -> None:
    """Each worker builds the shard of the tasks it sampled: gradient, HVP, line search."""
    family = get_family("cheetah_velocity")
    for workers in (1, 2):
        sampler = RaySampler(family, workers, num_threads=1)
        try:
            local, remote, _, _ = _local_and_ray_terms(sampler, family, MetaSettings())
            assert remote.plan_ref is not None and all(ray_instance.get(remote.plan_ref).keys), (
                "the workers' own episodes should be used"
            )
            _assert_same_terms(local, remote)
        finally:
            sampler.close()


def test_a_worker_lost_during_the_meta_step_is_replaced_with_its_tasks_episodes(
    ray_instance: Any,
) -> None:
    family = get_family("cheetah_velocity")
    sampler = RaySampler(family, 2, num_threads=1)
    try:
        local, remote, train, valid = _local_and_ray_terms(sampler, family, MetaSettings())
        with torch_threads(1):
            g_local, _ = local.gradient()
        g_remote, _ = remote.gradient()
        ray_instance.kill(sampler.workers[1])  # between the gradient and the products
        v = torch.randn(g_local.shape, generator=torch.Generator().manual_seed(1))
        with torch_threads(1):
            assert torch.equal(remote.hvp(v), local.hvp(v))
        assert sampler.replacements == 1
        # episodes this sampler did not return travel from the driver
        copies = [e._replace(observations=e.observations.copy()) for e in (train, valid)]
        spec, params = (
            local.shards[0].spec,
            {k: v.detach() for k, v in local.shards[0].theta.items()},
        )
        sent = sampler.meta_terms(spec, params, [copies[0]], copies[1], MetaSettings())
        assert not ray_instance.get(sent.plan_ref).keys
        assert torch.equal(sent.gradient()[0], g_remote)
    finally:
        sampler.close()


def test_inner_steps_on_the_workers_give_the_local_valid_episodes(ray_instance: Any) -> None:
    """sample_adapted: each worker adapts its own tasks' policies from the train round it kept
    (or was sent, or lost with a worker) and samples with them, as the driver would."""
    family = get_family("cheetah_velocity")
    tasks = family.sample_tasks(np.random.default_rng(3), 4)
    spec, params = _policy_params(family, 4, stacked=False)
    settings = MetaSettings()
    local_sampler = BatchSampler(family, num_threads=1)
    with torch_threads(1):
        train = local_sampler.sample(tasks, 5, SamplingPolicy(spec, params, 11), 6, 30)
        adapted = adapted_params_for_tasks(spec, params, train, settings)
        local = local_sampler.sample(
            tasks, 5, SamplingPolicy(spec, stack_params(adapted), 12), 7, 30
        )
    sampler = RaySampler(family, 2, num_threads=1)
    try:
        kept = sampler.sample(tasks, 5, SamplingPolicy(spec, params, 11), 6, 30)
        _assert_same(train, kept)

        def valid(rounds: list[Episodes]) -> Episodes:
            return sampler.sample_adapted(spec, params, rounds, settings, tasks, 5, 12, 7, 30)

        _assert_same(local, valid([kept]))  # the workers' own train round
        _assert_same(local, valid([train]))  # a round sampled elsewhere: sent to them
        ray_instance.kill(sampler.workers[0])
        _assert_same(local, valid([kept]))  # a new worker is given its tasks' round
        assert sampler.replacements == 1
    finally:
        sampler.close()


def _tiny_config(**sampler: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "family": "navigation2d",
            "iterations": 2,
            "meta_batch_size": 4,
            "episodes_per_step": 4,
            "horizon": 20,
            "checkpoint_every": 2,
            "torch_threads": 1,
            "policy": {"hidden_sizes": [16, 16]},
            "sampler": sampler,
        }
    )


def test_training_with_the_ray_backend_matches_the_local_run(
    ray_instance: Any, tmp_path: Path
) -> None:
    config = _tiny_config(backend="ray", workers=2, num_threads=1)
    remote = train(config, tmp_path / "ray", progress=False)
    local = train(_tiny_config(), tmp_path / "local", progress=False)
    assert remote.iteration == local.iteration == 2
    for name, value in local.params.items():
        torch.testing.assert_close(remote.params[name], value, rtol=1e-4, atol=NAVIGATION_ATOL)
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("ray", "local")]
    assert len(logs[0]) == len(logs[1]) == 2


def test_bench_measures_local_and_ray(ray_instance: Any) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed
    from bench.ray_bench import bench_ray, format_table

    results = bench_ray(num_tasks=2, episodes_per_task=2, horizon=5, cores=1, rounds=1)
    rows = results["contenders"]
    assert list(rows) == ["local", "ray 1 x 1"] and results["env_steps"] == 2 * 2 * 2 * 5
    assert all(row["identical_to_local"] and row["seconds"] > 0 for row in rows.values())
    assert rows["ray 1 x 1"]["overhead_vs_local"] == pytest.approx(
        rows["ray 1 x 1"]["seconds"] / rows["local"]["seconds"] - 1
    )
    iterations = results["iterations"]
    assert list(iterations) == ["local", "ray 1 x 1"]
    # one thread on both sides: the workers' shares of the meta-step give the local step
    assert all(row["same_step"] and row["outer_s"] > 0 for row in iterations.values())
    assert "| ray 1 x 1 |" in format_table(results)
    json.dumps(results)  # JSON-ready for runs/bench.json


def test_config_line_and_missing_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("family: navigation2d\nsampler: {backend: ray, workers: 2, num_threads: 1}\n")
    config = TrainConfig.from_yaml(path)
    assert (config.sampler.backend, config.sampler.workers) == ("ray", 2)
    path.write_text("family: navigation2d\nsampler: {workers: 2}\n")
    with pytest.raises(ConfigError, match="backend 'ray' only"):
        TrainConfig.from_yaml(path)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without Ray
    with pytest.raises(RayUnavailableError, match=r"pip install 'adaptctl\[ray\]'"):
        make_sampler(config, get_family("navigation2d"))
