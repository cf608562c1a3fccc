"""The adaptation step: from K on-policy episodes of one task to adapted policy parameters.

Everything follows the MAML paper (Finn, Abbeel, Levine 2017, sec. 5.3) and the authors' code
(cbfinn/maml_rl, which builds on rll/rllab): discounted returns, the linear feature baseline,
GAE advantages centred and normalised per task, the REINFORCE loss, and ONE vanilla
policy-gradient step ``theta' = theta - step_size * grad L(theta)``, ``step_size`` being the
paper's α. :func:`adapt` is the single implementation of that step: meta-training's inner loop
calls it with ``create_graph=True`` (second-order MAML) and the runtime controller with
``create_graph=False``. K, the episodes one step uses, is ``episodes_per_step`` everywhere.
The step may change only some of the parameters (``AdaptationSettings.adapted_parameters``);
the others keep their meta-trained values, and meta-training differentiates the same step.

Returns, baseline and advantages are computed in numpy float64 (small, exact linear algebra,
as rllab does); the :class:`TaskBatch` handed to the learner is float32 torch.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated, NamedTuple

import numpy as np
import torch
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    ValidationInfo,
)

from controller.policy import Params, PolicySpec, log_prob

if TYPE_CHECKING:  # only for the annotation: the controller core does not import sim at runtime
    from sim.episodes import Episodes


def _some_distinct(names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    if not names:
        raise ValueError(f"{info.field_name} is empty: the step would change nothing")
    if len(set(names)) != len(names):
        raise ValueError(f"{info.field_name} names a parameter twice: {list(names)}")
    return names


ParameterNames = Annotated[tuple[str, ...], AfterValidator(_some_distinct)]
"""Names of policy parameters a step changes: at least one, each once (whether the policy has
them is checked where its layers are known)."""


class AdaptationSettings(BaseModel):
    """How a batch of episodes becomes a policy-gradient step (paper defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_size: PositiveFloat = Field(
        default=0.1,
        # Older run records and artifacts call it first_step_size.
        validation_alias=AliasChoices("step_size", "first_step_size"),
        description="α, the inner step size: every inner step of meta-training and the first "
        "step at test time (paper: 0.1).",
    )
    later_step_size: PositiveFloat = Field(
        default=0.05, description="α of the second and later test-time steps (paper: 0.05)."
    )
    discount: float = Field(default=0.99, gt=0.0, le=1.0, description="Discount gamma.")
    gae_lambda: float = Field(
        default=1.0, ge=0.0, le=1.0, description="GAE lambda (paper: 1.0, Monte-Carlo returns)."
    )
    normalize_advantages: bool = Field(
        default=True,
        description="Centre and scale advantages to unit variance per task (rllab center_adv).",
    )
    baseline_reg: PositiveFloat = Field(
        default=1e-5, description="Ridge coefficient of the linear feature baseline (rllab)."
    )
    baseline_attempts: NonNegativeInt = Field(
        default=5,
        description="Fits tried, the ridge coefficient x10 after each non-finite one (rllab).",
    )
    adapted_parameters: ParameterNames | None = Field(
        default=None,
        description="Names of the policy parameters the step changes, the others keeping "
        "their meta-trained values; None: all (the paper). ['hidden.0.bias'] adapts the first "
        "layer's biases, where an oracle's task features enter its first layer (CAVIA, "
        "Zintgraf et al. 2019, adapts such an input context); ['mean.weight', 'mean.bias'] "
        "the output layer (ANIL, Raghu et al. 2020). Names: controller.policy.PolicySpec."
        "parameter_shapes.",
    )

    def step_size_at(self, step_index: int) -> float:
        """α of test-time gradient step ``step_index`` (0-based): step_size, then later_step_size."""
        return self.step_size if step_index == 0 else self.later_step_size

    def step_sizes(self, steps: int) -> list[float]:
        """α of test-time gradient steps 0..steps-1."""
        return [self.step_size_at(s) for s in range(steps)]


class TaskBatch(NamedTuple):
    """One task's episodes, ready for the policy-gradient loss (torch, float32 by default).

    E = episodes, H = horizon; padding after an early termination has ``valid == 0``.
    :func:`pack_steps` turns it into [N, ...] rows of valid steps, which every loss accepts.
    """

    observations: torch.Tensor
    """[E, H, O]"""
    actions: torch.Tensor
    """[E, H, A] as sampled by the policy (pre-clip)."""
    advantages: torch.Tensor
    """[E, H], zero at padded steps."""
    valid: torch.Tensor
    """[E, H] 1.0 where the step happened, 0.0 for padding."""


def discounted_cumsum(values: np.ndarray, factor: float) -> np.ndarray:
    """y[..., t] = sum_k factor^k x[..., t+k] along the last axis (rllab discount_cumsum)."""
    out = np.zeros_like(values, dtype=np.float64)
    running = np.zeros(values.shape[:-1], dtype=np.float64)
    for t in range(values.shape[-1] - 1, -1, -1):
        running = values[..., t] + factor * running
        out[..., t] = running
    return out


def baseline_features(observations: np.ndarray) -> np.ndarray:
    """rllab LinearFeatureBaseline features: [E, H, O] -> [E, H, 2*O + 4].

    [clip(o, -10, 10), clip(o, -10, 10)^2, t/100, (t/100)^2, (t/100)^3, 1] with t the step index.
    """
    obs = np.clip(observations.astype(np.float64), -10.0, 10.0)
    num_episodes, horizon, _ = obs.shape
    time = np.broadcast_to((np.arange(horizon) / 100.0)[None, :, None], (num_episodes, horizon, 1))
    ones = np.ones((num_episodes, horizon, 1))
    return np.concatenate([obs, obs**2, time, time**2, time**3, ones], axis=-1)


def fit_baseline(
    features: np.ndarray, returns: np.ndarray, valid: np.ndarray, settings: AdaptationSettings
) -> np.ndarray:
    """Ridge least squares on the valid steps: coefficients [F] with (X^T X + reg I) c = X^T y.

    As rllab, solved with lstsq on the normal equations; a non-finite solution (or a failed
    solve) is retried with the ridge coefficient x10, ``settings.baseline_attempts`` times in all.
    """
    mask = valid.astype(bool)
    x, y = features[mask], returns[mask]
    gram, target = x.T @ x, x.T @ y
    reg = settings.baseline_reg
    for _ in range(settings.baseline_attempts):
        try:
            coefficients = np.linalg.lstsq(gram + reg * np.eye(len(gram)), target, rcond=None)[0]
        except np.linalg.LinAlgError:  # e.g. "SVD did not converge" on non-finite input
            coefficients = np.full(len(gram), np.nan)
        if np.all(np.isfinite(coefficients)):
            return coefficients
        reg *= 10.0
    raise ValueError(
        "the linear feature baseline could not be fitted (non-finite solution at ridge "
        f"coefficients {settings.baseline_reg}..{reg / 10.0}); check the episodes for NaN or "
        "infinite observations or rewards"
    )


def advantages(
    observations: np.ndarray, rewards: np.ndarray, valid: np.ndarray, settings: AdaptationSettings
) -> np.ndarray:
    """GAE advantages of one task's episodes: [E, H, O], [E, H], [E, H] -> [E, H] float64.

    The baseline is fitted on these same episodes' discounted returns (per task, per
    iteration, as the paper). The value after an episode's last valid step is 0 (rllab
    appends 0 to every path, whether it ended by termination or at the horizon).
    """
    mask = valid.astype(np.float64)
    rewards = rewards.astype(np.float64) * mask
    features = baseline_features(observations)
    returns = discounted_cumsum(rewards, settings.discount)
    coefficients = fit_baseline(features, returns, valid, settings)
    values = (features @ coefficients) * mask
    next_values = np.concatenate([values[:, 1:], np.zeros_like(values[:, :1])], axis=1)
    deltas = (rewards + settings.discount * next_values - values) * mask
    adv = discounted_cumsum(deltas, settings.discount * settings.gae_lambda) * mask
    if settings.normalize_advantages:
        real = adv[valid.astype(bool)]
        # rllab center_advantages: (A - mean) / (std + 1e-8), population std.
        adv = (adv - real.mean()) / (real.std() + 1e-8) * mask
    return adv


def batch_from_arrays(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    valid: np.ndarray,
    settings: AdaptationSettings,
) -> TaskBatch:
    """One task's episodes as numpy [E, H, ...] -> :class:`TaskBatch` (float32 torch).

    The runtime controller calls this on the steps it recorded; :func:`task_batch` on the
    sampler's :class:`~sim.episodes.Episodes`.
    """
    if observations.ndim != 3 or actions.ndim != 3 or rewards.ndim != 2 or valid.ndim != 2:
        raise ValueError(
            "expected observations [E, H, O], actions [E, H, A], rewards [E, H], valid [E, H]; "
            f"got {observations.shape}, {actions.shape}, {rewards.shape}, {valid.shape}"
        )
    if not valid.any():
        raise ValueError("no valid steps in this batch: nothing to adapt on")
    adv = advantages(observations, rewards, valid, settings)
    return TaskBatch(
        observations=torch.from_numpy(np.ascontiguousarray(observations, dtype=np.float32)),
        actions=torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)),
        advantages=torch.from_numpy(adv.astype(np.float32)),
        valid=torch.from_numpy(valid.astype(np.float32)),
    )


def task_batch(episodes: Episodes, task_index: int, settings: AdaptationSettings) -> TaskBatch:
    """The :class:`TaskBatch` of task ``task_index`` of a sampler's Episodes [T, E, H, ...]."""
    return batch_from_arrays(
        episodes.observations[task_index],
        episodes.actions[task_index],
        episodes.rewards[task_index],
        episodes.valid[task_index],
        settings,
    )


def pack_steps(batch: TaskBatch) -> TaskBatch:
    """The batch's valid steps only, in episode order, as [N, ...] (N valid steps, valid = 1).

    Every loss here is a sum over valid steps, so a packed batch gives the same values (up to
    the order of float additions) without arithmetic on padding. Packing a packed batch
    returns it unchanged.
    """
    mask = batch.valid.reshape(-1) > 0
    steps = mask.numel()
    return TaskBatch(
        observations=batch.observations.reshape(steps, -1)[mask],
        actions=batch.actions.reshape(steps, -1)[mask],
        advantages=batch.advantages.reshape(-1)[mask],
        valid=batch.valid.reshape(-1)[mask],
    )


def policy_gradient_loss(spec: PolicySpec, params: Params, batch: TaskBatch) -> torch.Tensor:
    """REINFORCE loss, a scalar: -mean over valid steps of log pi(a|s) * advantage."""
    logp = log_prob(spec, params, batch.observations, batch.actions)
    return -(logp * batch.advantages * batch.valid).sum() / batch.valid.sum()


def adapt(
    spec: PolicySpec,
    params: Params,
    batch: TaskBatch,
    step_size: float,
    create_graph: bool = False,
    parameters: Collection[str] | None = None,
) -> Params:
    """THE adaptation step: theta' = theta - step_size * grad L(theta), L the REINFORCE loss.

    ``step_size`` is α (:attr:`AdaptationSettings.step_size`, or ``step_size_at(i)`` for test
    step i). ``parameters`` (:attr:`AdaptationSettings.adapted_parameters`): the names the
    step changes; the others are returned as given. None: all.

    With ``create_graph=True`` the result stays a differentiable function of ``params``
    (which must require grad), so a meta-gradient can flow through it (second-order MAML).
    With ``False`` no graph is kept and the result is detached: the cheap runtime form.
    """
    names = list(params) if parameters is None else list(parameters)
    unknown = [name for name in names if name not in params]
    if unknown or not names:
        raise ValueError(
            f"adapted parameters {unknown or names} are not among the policy's: {list(params)}"
        )
    if create_graph:
        if not all(p.requires_grad for p in params.values()):
            raise ValueError("adapt(create_graph=True) needs parameters that require grad")
        inputs = params
    else:
        inputs = {name: p.detach().requires_grad_(name in names) for name, p in params.items()}
    with torch.enable_grad():
        loss = policy_gradient_loss(spec, inputs, batch)
        grads = torch.autograd.grad(loss, [inputs[n] for n in names], create_graph=create_graph)
    steps = dict(zip(names, grads, strict=True))
    adapted = {
        name: p - step_size * steps[name] if name in steps else p for name, p in inputs.items()
    }
    if not create_graph:
        adapted = {name: p.detach() for name, p in adapted.items()}
    return adapted
