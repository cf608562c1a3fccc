"""Gaussian MLP policy as plain parameters and pure functions.

A policy is a :class:`PolicySpec` (its architecture) plus ``Params``, a ``dict[str, Tensor]``.
Nothing here holds state or mutates parameters: adaptation and meta-training produce new
``Params``: acting is separate from learning. The architecture is the paper's (Finn et al. 2017,
sec. 5.3): an MLP for the action mean and a state-independent log standard deviation.

Parameter keys and shapes (A = action size, O = observation size, h_i = hidden sizes)::

    hidden.{i}.weight  [h_i, h_{i-1}]   (h_{-1} = O)
    hidden.{i}.bias    [h_i]
    mean.weight        [A, h_last]
    mean.bias          [A]
    log_std            [A]

Parameters may be *stacked* on a leading task axis (every tensor gets a leading ``T``); the
functions below then take observations ``[T, ..., O]`` and evaluate task ``t``'s parameters on
``obs[t]``. Shapes use ``...`` for any number of batch dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

Params = dict[str, torch.Tensor]
"""Policy parameters by name; see the module docstring for keys and shapes."""

_LOG_2PI = math.log(2.0 * math.pi)


class PolicySpec(BaseModel):
    """Architecture of the Gaussian MLP policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observation_size: PositiveInt = Field(description="Length O of the observation vector.")
    action_size: PositiveInt = Field(description="Length A of the action vector.")
    hidden_sizes: tuple[PositiveInt, ...] = Field(
        default=(100, 100),
        description="Units of each hidden layer (paper: two layers of 100).",
    )
    activation: Literal["relu", "tanh"] = Field(
        default="relu", description="Hidden-layer nonlinearity (paper: ReLU)."
    )
    init_log_std: float = Field(
        default=0.0,
        description="Initial log standard deviation of every action dimension "
        "(the authors' code: init_std 1.0, i.e. log-std 0).",
    )

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter (unstacked), in forward order."""
        shapes: dict[str, tuple[int, ...]] = {}
        fan_in = self.observation_size
        for i, width in enumerate(self.hidden_sizes):
            shapes[f"hidden.{i}.weight"] = (width, fan_in)
            shapes[f"hidden.{i}.bias"] = (width,)
            fan_in = width
        shapes["mean.weight"] = (self.action_size, fan_in)
        shapes["mean.bias"] = (self.action_size,)
        shapes["log_std"] = (self.action_size,)
        return shapes

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.parameter_shapes.values())


def init_params(spec: PolicySpec, seed: int) -> Params:
    """Fresh float32 parameters, initialised as the authors' code does.

    The reference policy (``MAMLGaussianMLPPolicy`` in cbfinn/maml_rl) uses Xavier/Glorot
    uniform weights, zero biases and a constant log-std; we do the same, drawing from a torch
    generator seeded with ``seed`` (same seed -> same parameters).
    """
    generator = torch.Generator().manual_seed(seed)
    params: Params = {}
    for name, shape in spec.parameter_shapes.items():
        if name == "log_std":
            params[name] = torch.full(shape, spec.init_log_std, dtype=torch.float32)
        elif name.endswith(".bias"):
            params[name] = torch.zeros(shape, dtype=torch.float32)
        else:
            fan_out, fan_in = shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio 2010, uniform
            uniform = torch.rand(shape, generator=generator, dtype=torch.float32)
            params[name] = (2.0 * uniform - 1.0) * limit
    return params


def is_stacked(spec: PolicySpec, params: Params) -> bool:
    """True when ``params`` carry a leading task axis; raises on a malformed parameter set."""
    expected = spec.parameter_shapes
    if set(params) != set(expected):
        missing, extra = set(expected) - set(params), set(params) - set(expected)
        raise ValueError(
            f"parameters do not match the policy spec: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    stacked = params["log_std"].dim() == 2
    lead = (params["log_std"].shape[0],) if stacked else ()
    for name, shape in expected.items():
        if tuple(params[name].shape) != lead + shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(params[name].shape)}, expected "
                f"{lead + shape} for this spec ({'stacked' if stacked else 'single'} parameters)"
            )
    return stacked


def stack_params(param_sets: Sequence[Params]) -> Params:
    """Stack T parameter sets into one with a leading task axis ``[T, ...]``."""
    if not param_sets:
        raise ValueError("stack_params needs at least one parameter set")
    return {name: torch.stack([p[name] for p in param_sets]) for name in param_sets[0]}


def unstack_params(params: Params) -> list[Params]:
    """Inverse of :func:`stack_params`: T parameter sets (views, not copies)."""
    num_tasks = params["log_std"].shape[0]
    return [{name: value[t] for name, value in params.items()} for t in range(num_tasks)]


def mean_action(spec: PolicySpec, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Mean of the action distribution: obs [..., O] -> [..., A].

    With stacked parameters obs is [T, ..., O] and the result [T, ..., A].
    """
    stacked = is_stacked(spec, params)
    if obs.shape[-1] != spec.observation_size:
        raise ValueError(
            f"observations have size {obs.shape[-1]}, the policy expects {spec.observation_size}"
        )
    activation = torch.relu if spec.activation == "relu" else torch.tanh
    if stacked:
        num_tasks = params["log_std"].shape[0]
        if obs.dim() < 2 or obs.shape[0] != num_tasks:
            raise ValueError(
                f"stacked parameters for {num_tasks} tasks need observations [T={num_tasks}, ..., "
                f"O], got shape {tuple(obs.shape)}"
            )
        x = obs.reshape(num_tasks, -1, spec.observation_size)
    else:
        x = obs
    for i in range(len(spec.hidden_sizes)):
        x = activation(_affine(x, params[f"hidden.{i}.weight"], params[f"hidden.{i}.bias"]))
    mean = _affine(x, params["mean.weight"], params["mean.bias"])
    return mean.reshape(*obs.shape[:-1], spec.action_size)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ weight^T + bias for one parameter set, or per task for stacked ones."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def broadcast_log_std(params: Params, mean: torch.Tensor) -> torch.Tensor:
    """log_std shaped to broadcast against a mean [..., A] (or [T, ..., A] when stacked)."""
    log_std = params["log_std"]
    if log_std.dim() == 2:  # stacked: [T, A] -> [T, 1, ..., 1, A]
        return log_std.reshape(log_std.shape[0], *([1] * (mean.dim() - 2)), log_std.shape[1])
    return log_std


def gaussian_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last (action) axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * z.square().sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * _LOG_2PI


def log_prob(
    spec: PolicySpec, params: Params, obs: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """log pi(actions | obs): obs [..., O], actions [..., A] -> [...]."""
    mean = mean_action(spec, params, obs)
    return gaussian_log_prob(mean, broadcast_log_std(params, mean), actions)


def gaussian_kl(
    mean_old: torch.Tensor,
    log_std_old: torch.Tensor,
    mean_new: torch.Tensor,
    log_std_new: torch.Tensor,
) -> torch.Tensor:
    """KL(N_old || N_new) of diagonal Gaussians, summed over the last (action) axis.

    Closed form per dimension: log(s_new/s_old) + (s_old^2 + (m_old - m_new)^2) / (2 s_new^2)
    - 1/2 (the form rllab's ``DiagonalGaussian.kl_sym`` uses).
    """
    var_ratio = torch.exp(2.0 * (log_std_old - log_std_new))
    mean_term = (mean_old - mean_new).square() * torch.exp(-2.0 * log_std_new)
    per_dim = log_std_new - log_std_old + 0.5 * (var_ratio + mean_term) - 0.5
    return per_dim.sum(-1)


def kl_divergence(
    spec: PolicySpec, params_old: Params, params_new: Params, obs: torch.Tensor
) -> torch.Tensor:
    """KL(pi_old(.|obs) || pi_new(.|obs)) per observation: obs [..., O] -> [...].

    Callers average it over the (valid) observations to get the mean KL that TRPO bounds.
    """
    mean_old = mean_action(spec, params_old, obs)
    mean_new = mean_action(spec, params_new, obs)
    return gaussian_kl(
        mean_old,
        broadcast_log_std(params_old, mean_old),
        mean_new,
        broadcast_log_std(params_new, mean_new),
    )


class SamplingPolicy:
    """The stochastic policy a sampler calls: obs [T, E, O] -> actions [T, E, A], numpy float32.

    Holds either one parameter set shared by all tasks or one per task (stacked, ``[T, ...]``).
    The action noise of task ``t`` comes from its own torch generator, seeded from
    ``SeedSequence([seed, task_offset + t])``: the same seed and the same observations give the
    same actions, and a task's noise does not depend on which other tasks share the call, so a
    meta-batch split into shards (:meth:`shard`, meta_train/ray_sampler.py) draws what one
    batch does. Runs without autograd. Thread count is the caller's business (torch's global).
    """

    def __init__(self, spec: PolicySpec, params: Params, seed: int, task_offset: int = 0) -> None:
        self.spec = spec
        self.stacked = is_stacked(spec, params)
        self.num_tasks = int(params["log_std"].shape[0]) if self.stacked else None
        self.params: Params = {name: value.detach() for name, value in params.items()}
        """The parameters as given (detached): what a remote shard rebuilds this policy from."""
        self.seed = seed
        self.task_offset = task_offset
        # Pre-transposed contiguous weights: x @ W^T as addmm/baddbmm without a strided view.
        self._layers = []
        names = [f"hidden.{i}" for i in range(len(spec.hidden_sizes))] + ["mean"]
        for name in names:
            weight = self.params[f"{name}.weight"].to(torch.float32)
            bias = self.params[f"{name}.bias"].to(torch.float32)
            if self.stacked:
                self._layers.append((weight.transpose(1, 2).contiguous(), bias.unsqueeze(1)))
            else:
                self._layers.append((weight.t().contiguous(), bias.contiguous()))
        std = torch.exp(self.params["log_std"].to(torch.float32))
        self._std = std.unsqueeze(1) if self.stacked else std
        self._relu = spec.activation == "relu"
        self._generators: list[torch.Generator] = []
        self.calls = 0
        """Times this policy has acted; a fresh one (0) can be rebuilt elsewhere exactly."""

    def shard(self, start: int, stop: int) -> SamplingPolicy:
        """A fresh policy for tasks ``start:stop`` of this one's calls: same seed, the task
        streams of those tasks, and (if stacked) their parameter sets."""
        if not 0 <= start < stop or (self.num_tasks is not None and stop > self.num_tasks):
            raise ValueError(
                f"cannot take tasks {start}:{stop} of a policy for {self.num_tasks} tasks"
            )
        params = self.params
        if self.stacked:
            params = {name: value[start:stop] for name, value in params.items()}
        return SamplingPolicy(self.spec, params, self.seed, self.task_offset + start)

    def _task_generators(self, num_tasks: int) -> list[torch.Generator]:
        while len(self._generators) < num_tasks:
            task = self.task_offset + len(self._generators)
            state = np.random.SeedSequence([self.seed, task]).generate_state(1, np.uint64)
            self._generators.append(torch.Generator().manual_seed(int(state[0])))
        return self._generators[:num_tasks]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if obs.ndim != 3 or obs.shape[-1] != self.spec.observation_size:
            raise ValueError(
                f"expected observations [T, E, O={self.spec.observation_size}], "
                f"got shape {obs.shape}"
            )
        if self.stacked and obs.shape[0] != self.num_tasks:
            raise ValueError(
                f"this policy holds parameters for {self.num_tasks} tasks, "
                f"got observations for {obs.shape[0]}"
            )
        num_tasks, num_envs, _ = obs.shape
        self.calls += 1
        x = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32))
        with torch.inference_mode():
            if not self.stacked:
                x = x.reshape(num_tasks * num_envs, -1)
            for index, (weight_t, bias) in enumerate(self._layers):
                x = (
                    torch.baddbmm(bias, x, weight_t)
                    if self.stacked
                    else torch.addmm(bias, x, weight_t)
                )
                if index < len(self._layers) - 1:
                    x = x.relu_() if self._relu else x.tanh_()
            noise = torch.empty((num_tasks, num_envs, x.shape[-1]), dtype=torch.float32)
            for generator, rows in zip(
                self._task_generators(num_tasks), noise.unbind(0), strict=True
            ):
                rows.normal_(generator=generator)
            actions = x.addcmul_(noise.reshape(x.shape), self._std)
        return actions.reshape(num_tasks, num_envs, -1).numpy()
