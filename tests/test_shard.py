"""The meta-step's terms split by tasks add up to the whole meta-batch's: gradient, every
Hessian-vector product, the line search's values and so the accepted step, for MAML (exact and
finite-difference products, with E-MAML's term) and the comparators' policy step.

Every sum over tasks is taken task by task in one order, so the split gives the same bits as
one shard; only the paper's finite-difference products (differences of each shard's KL
gradient) agree to float32 rounding. Episodes: Ant velocity, counted in steps (tasks whose
episodes end early get more of them, so rows are padded), a small policy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controller.policy import Params, PolicySpec, SamplingPolicy, init_params, stack_params
from meta_train.maml import meta_step, trpo_on
from meta_train.objective import MetaSettings, adapted_params_for_tasks
from meta_train.shard import (
    MetaShard,
    PolicyShard,
    ShardSum,
    exploration_weights,
    meta_totals,
)
from sim.episodes import Episodes
from sim.families import get_family
from sim.sampler import BatchSampler

FAMILY = get_family("ant_velocity")
SPEC = PolicySpec(
    observation_size=FAMILY.observation_size,
    action_size=FAMILY.action_size,
    hidden_sizes=(16,),
    init_log_std=0.5,
)
SPLIT = ((0, 1), (1, 4))


def _meta_batch(settings: MetaSettings, params: Params) -> tuple[Episodes, Episodes]:
    tasks = FAMILY.sample_tasks(np.random.default_rng(0), 4)
    sampler = BatchSampler(FAMILY, num_threads=1)
    policy = SamplingPolicy(SPEC, params, seed=1)
    train = sampler.sample(tasks, 2, policy, 2, horizon=150, batch_unit="steps")
    adapted = adapted_params_for_tasks(SPEC, params, train, settings)
    policy = SamplingPolicy(SPEC, stack_params(adapted), seed=3)
    return train, sampler.sample(tasks, 2, policy, 4, horizon=150, batch_unit="steps")


def _meta_shards(
    settings: MetaSettings, params: Params, train: Episodes, valid: Episodes
) -> tuple[ShardSum, ShardSum]:
    totals = meta_totals(valid, settings)
    weights = exploration_weights(valid)

    def shard(start: int, stop: int) -> MetaShard:
        return MetaShard(
            SPEC,
            params,
            [train.tasks_between(start, stop)],
            valid.tasks_between(start, stop),
            settings,
            totals,
            weights[start:stop],
        )

    return ShardSum([shard(0, 4)]), ShardSum([shard(a, b) for a, b in SPLIT])


def _assert_same_terms(
    whole: ShardSum, split: ShardSum, params: Params, exact_products: bool = True
) -> None:
    (g_whole, v_whole), (g_split, v_split) = whole.gradient(), split.gradient()
    assert torch.equal(g_split, g_whole) and v_split == v_whole
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = torch.randn(g_whole.shape, generator=generator)
        if exact_products:
            assert torch.equal(split.hvp(v), whole.hvp(v))
        else:
            torch.testing.assert_close(split.hvp(v), whole.hvp(v), rtol=1e-3, atol=1e-6)
    flat = torch.cat([p.reshape(-1) for p in params.values()]) - 1e-3 * g_whole
    assert split.evaluate(flat) == whole.evaluate(flat)


@pytest.mark.parametrize(
    "update",
    [{}, {"hvp": "finite_difference"}, {"exploration_weight": 0.5}, {"hvp_subsample": 0.5}],
    ids=["exact", "finite_difference", "e_maml", "subsample"],
)
def test_meta_shards_add_up_to_the_meta_batch(update: dict) -> None:
    settings = MetaSettings(**update)
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(settings, params)
    whole, split = _meta_shards(settings, params, train, valid)
    _assert_same_terms(whole, split, params, exact_products=settings.hvp == "exact")


def test_split_meta_step_takes_the_local_step() -> None:
    settings = MetaSettings()
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(settings, params)
    assert not valid.real.all(), "some Ant episodes should end early (padded rows)"
    local, local_report = meta_step(SPEC, params, train, valid, settings)
    _, split = _meta_shards(settings, params, train, valid)
    shared, report = trpo_on(split, params, settings.trpo, 4, 0.0)
    assert local_report.trpo.accepted and report.trpo.accepted
    assert report.trpo.backtracks == local_report.trpo.backtracks
    for name in local:
        assert torch.equal(shared[name], local[name]), name


def test_policy_shards_add_up_to_the_comparator_step() -> None:
    settings = MetaSettings()
    params = init_params(SPEC, 0)
    train, _ = _meta_batch(settings, params)
    totals = meta_totals(train, settings)
    whole = ShardSum([PolicyShard(SPEC, params, train, settings, totals)])
    split = ShardSum(
        [PolicyShard(SPEC, params, train.tasks_between(a, b), settings, totals) for a, b in SPLIT]
    )
    _assert_same_terms(whole, split, params)


def test_a_shard_needs_its_gradient_before_products_and_one_round_per_inner_step() -> None:
    settings = MetaSettings()
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(settings, params)
    shard = MetaShard(SPEC, params, [train], valid, settings, meta_totals(valid, settings))
    with pytest.raises(RuntimeError, match="gradient"):
        shard.hvp_share(torch.zeros(1))
    with pytest.raises(ValueError, match="one round per inner step"):
        MetaShard(SPEC, params, [train, train], valid, settings, meta_totals(valid, settings))
    with pytest.raises(ValueError, match="E-MAML weight"):
        MetaShard(SPEC, params, [train], valid, MetaSettings(exploration_weight=1.0), shard.totals)
