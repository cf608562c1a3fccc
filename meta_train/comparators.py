"""The paper's comparators, trained by the same loop as MAML (Finn et al. 2017, sec. 5.3).

* pretrained: one policy trained with TRPO on episodes of the mixture of tasks;
* oracle: the same, with the task's features appended to the observation;
* random: a freshly initialised policy (nothing to train).

Their TRPO step is the MAML step without the inner adaptation: the policy that sampled the
episodes is the one being improved, so the surrogate is the usual likelihood ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from controller.policy import Params, PolicySpec
from meta_train.maml import MetaStepReport, trpo_on
from meta_train.objective import MetaSettings
from meta_train.shard import ObjectiveTerms, PolicyShard, ShardSum, meta_totals

if TYPE_CHECKING:
    from sim.episodes import Episodes


def policy_step(
    spec: PolicySpec,
    params: Params,
    episodes: Episodes,
    settings: MetaSettings,
    where_sampled: Callable[[], ObjectiveTerms] | None = None,
) -> tuple[Params, MetaStepReport]:
    """One TRPO step of a single (non-adapting) policy on the episodes of all tasks
    (``where_sampled``: builds its terms where the episodes are, as for
    :func:`meta_train.maml.meta_step`)."""
    start = time.perf_counter()
    if where_sampled is not None:
        terms = where_sampled()
    else:
        totals = meta_totals(episodes, settings.model_copy(update={"hvp_subsample": 1.0}))
        terms = ShardSum([PolicyShard(spec, params, episodes, settings, totals)])
    return trpo_on(terms, params, settings.trpo, episodes.num_tasks, start)
