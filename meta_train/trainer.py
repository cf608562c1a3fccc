"""The meta-training loop: sample, adapt, sample again, take the TRPO meta-step; repeat.

Every iteration draws its randomness from ``SeedSequence([seed, iteration])``, so a run resumed
from a checkpoint produces exactly the iterations an uninterrupted run would. The paper keeps the
iteration with the best average training return (Finn et al. 2017, appendix A.2): here the mean return
of the valid (post-adaptation) episodes, i.e. the meta-objective's own return, averaged over the
last ``selection_window`` iterations (default 1: the iteration's own). A wider window keeps an
iteration that is good rather than one whose meta-batch happened to draw easy tasks: HalfCheetah
direction's returns swing with how many of its 40 tasks run backward.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from controller.artifact import ArtifactAdaptation, save_artifact
from controller.policy import Params, PolicySpec, SamplingPolicy, stack_params
from meta_train.comparators import policy_step
from meta_train.config import TrainConfig
from meta_train.export import calibrated_adaptation, family_layout
from meta_train.maml import meta_step
from meta_train.objective import adapted_params_for_tasks
from meta_train.rundir import (
    ARTIFACT_DIR,
    LOG_FILE,
    TrainState,
    prepare_run_dir,
    save_checkpoint,
)
from meta_train.samplers import EpisodeSampler, KeepingSampler, make_sampler
from meta_train.shard import ObjectiveTerms
from sim.episodes import Episodes
from sim.families import Family, get_family
from sim.tasks import Task


def policy_spec(config: TrainConfig, family: Family) -> PolicySpec:
    extra = family.task_space.feature_size if config.mode == "oracle" else 0
    return PolicySpec(
        observation_size=family.observation_size + extra,
        action_size=family.action_size,
        hidden_sizes=config.policy.hidden_sizes,
        activation=config.policy.activation,
        init_log_std=config.policy.init_log_std,
    )


def iteration_seeds(seed: int, iteration: int, inner_steps: int = 1) -> dict[str, int]:
    """Independent seeds for every random draw of one iteration.

    Train round k > 0 (``inner_steps`` > 1) draws ``train_reset_k`` and ``train_policy_k``,
    generated after the first five: SeedSequence words do not depend on how many are asked
    for, so a one-step run draws exactly the seeds it always has and resumes identically.
    """
    names = ["tasks", "train_reset", "train_policy", "valid_reset", "valid_policy"]
    for k in range(1, inner_steps):
        names += [f"train_reset_{k}", f"train_policy_{k}"]
    values = np.random.SeedSequence([seed, iteration]).generate_state(len(names))
    return {name: int(v) for name, v in zip(names, values, strict=True)}


def sample_adapted_rounds(
    config: TrainConfig,
    spec: PolicySpec,
    sampler: EpisodeSampler,
    tasks: Sequence[Task],
    params: Params,
    seeds: dict[str, int],
    train: Episodes,
) -> tuple[list[Episodes], Episodes, float, float]:
    """From train round 0: train rounds 1..n-1 and the valid episodes, and (sampling, inner) s.

    Each is sampled with the per-task policies adapted on all rounds before it: the inner
    update is on-policy, so every step needs fresh episodes (Finn et al. 2017, Algorithm 3, step 8).
    """
    rounds, sampling_s, inner_s = [train], 0.0, 0.0
    steps = config.meta.inner_steps
    for k in range(1, steps + 1):
        start = time.perf_counter()
        suffix = "" if k == steps else f"_{k}"
        prefix = "valid" if k == steps else "train"
        policy_seed = seeds[f"{prefix}_policy{suffix}"]
        reset_seed = seeds[f"{prefix}_reset{suffix}"]
        if isinstance(sampler, KeepingSampler):  # the inner steps count as sampling there
            sampled_from = start
            episodes = sampler.sample_adapted(
                spec,
                params,
                rounds,
                config.meta,
                tasks,
                config.episodes_per_step,
                policy_seed,
                reset_seed,
                config.horizon,
                config.batch_unit,
            )
        else:
            adapted = adapted_params_for_tasks(spec, params, rounds, config.meta)
            sampled_from = time.perf_counter()
            inner_s += sampled_from - start
            policy = SamplingPolicy(spec, stack_params(adapted), policy_seed)
            episodes = sampler.sample(
                tasks,
                config.episodes_per_step,
                policy,
                reset_seed,
                config.horizon,
                batch_unit=config.batch_unit,
            )
        rounds.append(episodes)
        sampling_s += time.perf_counter() - sampled_from
    return rounds[:-1], rounds[-1], sampling_s, inner_s


def _meta_terms(
    sampler: EpisodeSampler,
    spec: PolicySpec,
    params: Params,
    rounds: Sequence[Episodes],
    valid: Episodes,
    config: TrainConfig,
) -> Callable[[], ObjectiveTerms] | None:
    """Where the sampler keeps the episodes (Ray workers), the meta-step's terms are built
    there (``RaySampler.meta_terms``); None: here."""
    if not isinstance(sampler, KeepingSampler):
        return None
    return lambda: sampler.meta_terms(spec, params, rounds, valid, config.meta)


def _policy_terms(
    sampler: EpisodeSampler,
    spec: PolicySpec,
    params: Params,
    episodes: Episodes,
    config: TrainConfig,
) -> Callable[[], ObjectiveTerms] | None:
    """As :func:`_meta_terms`, for the comparators' step."""
    if not isinstance(sampler, KeepingSampler):
        return None
    return lambda: sampler.policy_terms(spec, params, episodes, config.meta)


def draw_tasks(config: TrainConfig, family: Family, seeds: dict[str, int]) -> list[Task]:
    """The meta-batch of the iteration whose ``iteration_seeds`` are ``seeds``."""
    return family.sample_tasks(np.random.default_rng(seeds["tasks"]), config.meta_batch_size)


def run_iteration(
    config: TrainConfig,
    family: Family,
    spec: PolicySpec,
    sampler: EpisodeSampler,
    params: Params,
    iteration: int,
) -> tuple[Params, dict[str, Any]]:
    """One meta-iteration; returns the new parameters and the log record."""
    seeds = iteration_seeds(config.seed, iteration, config.meta.inner_steps)
    tasks = draw_tasks(config, family, seeds)
    oracle = config.mode == "oracle"
    start = time.perf_counter()
    train = sampler.sample(
        tasks,
        config.episodes_per_step,
        SamplingPolicy(spec, params, seeds["train_policy"]),
        seeds["train_reset"],
        config.horizon,
        task_features=oracle,
        batch_unit=config.batch_unit,
    )
    sampled = time.perf_counter()
    rounds = [train]
    if config.mode == "maml":
        rounds, valid, sampling_s, inner_s = sample_adapted_rounds(
            config, spec, sampler, tasks, params, seeds, train
        )
        new_params, report = meta_step(
            spec,
            params,
            rounds,
            valid,
            config.meta,
            _meta_terms(sampler, spec, params, rounds, valid, config),
        )
        sampling_s += sampled - start
        return_after = valid.mean_return()
    else:
        new_params, report = policy_step(
            spec, params, train, config.meta, _policy_terms(sampler, spec, params, train, config)
        )
        sampling_s, inner_s = sampled - start, 0.0
        return_after = train.mean_return()
    end = time.perf_counter()
    trpo = report.trpo
    after = valid if config.mode == "maml" else train
    record = {
        "iteration": iteration,
        "return_before": train.mean_return(),
        "return_after": return_after,
        # mean episode length (steps): where episodes terminate early, whether they lengthen
        "length_before": train.mean_length(),
        "length_after": after.mean_length(),
        # episodes per task: K, or more where a batch counted in steps meets short episodes
        "episodes_before": float(train.real.sum(axis=1).mean()),
        "accepted": trpo.accepted,
        "kl": trpo.kl,
        "step_fraction": trpo.step_fraction,
        "backtracks": trpo.backtracks,
        "surrogate_before": trpo.surrogate_before,
        "surrogate_after": trpo.surrogate_after,
        "reject_reason": trpo.reason,
        "sampling_s": round(sampling_s, 4),
        "inner_s": round(inner_s, 4),
        "outer_s": round(end - start - sampling_s - inner_s, 4),
        "total_s": round(end - start, 4),
        # the outer step's parts: gradient, Hessian-vector products (and their number), line search
        "gradient_s": round(report.gradient_seconds, 4),
        "hvp_s": round(report.hvp_seconds, 4),
        "hvp_calls": report.hvp_calls,
        "hvp_first_s": round(report.hvp_first_seconds, 4),  # of hvp_s; builds the curvature
        "line_search_s": round(report.line_search_seconds, 4),
    }
    if len(rounds) > 1:  # mean return after 0, 1, ..., n-1 inner steps
        record["inner_returns"] = [r.mean_return() for r in rounds]
    return new_params, record


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    max_iterations: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainState:
    """Run (or continue, with ``resume``) the training in ``run_dir``; returns the final state.

    ``max_iterations`` stops after that many iterations of this call (the run can be resumed).
    ``on_record`` receives each iteration's log record after it is written (e.g. TensorBoard).
    """
    run_dir = Path(run_dir)
    family = get_family(config.family)
    spec = policy_spec(config, family)
    state, logged_returns = prepare_run_dir(config, run_dir, spec, resume)
    torch.set_num_threads(config.torch_threads)
    sampler = make_sampler(config, family)
    stop = config.iterations
    if max_iterations is not None:
        stop = min(stop, state.iteration + max_iterations)
    bar = tqdm(
        range(state.iteration, stop),
        initial=state.iteration,
        total=config.iterations,
        desc=f"{config.mode} {config.family}",
        disable=not progress,
        unit="it",
    )
    calibration: Calibration | None = None
    recent = deque(logged_returns, maxlen=config.selection_window)
    for iteration in bar:
        new_params, record = run_iteration(config, family, spec, sampler, state.params, iteration)
        recent.append(record["return_after"])
        score = float(np.mean(recent))
        if score > state.best_return:
            # The return was earned by the parameters that entered this iteration.
            state.best_return, state.best_iteration = score, iteration
            state.best_params = state.params
        state.params, state.iteration = new_params, iteration + 1
        # Opened per record, not once per run: a run lasts hours, and a log file replaced
        # meanwhile (a git checkout of a committed run directory) must not swallow its records.
        with open(run_dir / LOG_FILE, "a") as log:
            log.write(json.dumps(record) + "\n")
        if on_record is not None:
            on_record(record)
        bar.set_postfix(
            before=f"{record['return_before']:.1f}",
            after=f"{record['return_after']:.1f}",
            best=f"{state.best_return:.1f}",
            s=f"{record['total_s']:.1f}",
        )
        if state.iteration % config.checkpoint_every == 0 or state.iteration == stop:
            save_checkpoint(run_dir, state)
            calibration = export(config, family, spec, state, run_dir / ARTIFACT_DIR, calibration)
    return state


Calibration = tuple[int, ArtifactAdaptation, dict[str, Any]]
"""(best iteration, its calibrated adaptation settings, the measurement record)."""


def export(
    config: TrainConfig,
    family: Family,
    spec: PolicySpec,
    state: TrainState,
    path: Path,
    calibration: Calibration | None = None,
) -> Calibration | None:
    """Write the best parameters so far as an artifact; returns the KL calibration used.

    ``calibration`` from the previous export is reused while the best iteration is the same:
    measuring it samples K episodes of 10 tasks, and most checkpoints keep the same best.

    Unless the run trains the oracle (which never adapts), the artifact's KL bound is
    calibrated on the best parameters' own adaptation steps (meta_train.export): a bound
    fixed in advance either rejects a meta-trained initialization's normal steps (docs/results.md gives the
    shipped artifacts' step KLs) or lets a broken one
    through.
    """
    training = json.loads(config.model_dump_json())
    training.update(
        best_iteration=state.best_iteration,
        best_return=state.best_return,
        iterations_done=state.iteration,
    )
    adaptation = ArtifactAdaptation(
        episodes_per_step=config.episodes_per_step,
        batch_unit=config.batch_unit,
        horizon=config.horizon or family.horizon,
        settings=config.adaptation,
    )
    if config.mode != "oracle":
        if calibration is None or calibration[0] != state.best_iteration:
            calibration = (
                state.best_iteration,
                *calibrated_adaptation(
                    family, spec, state.best_params, adaptation, config.sampler.num_threads
                ),
            )
        _, adaptation, training["max_kl_calibration"] = calibration
    layout = family_layout(family, task_features=config.mode == "oracle")
    save_artifact(
        path,
        spec,
        state.best_params,
        family=family.name,
        layout=layout,
        adaptation=adaptation,
        training=training,
        overwrite=True,
    )
    return calibration
