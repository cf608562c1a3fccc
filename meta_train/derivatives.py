"""Closed-form derivative products of the Gaussian MLP policy, for the TRPO meta-step's curvature.

The meta-step's constraint has the Hessian sum_i J_i^T F_i J_i (:mod:`meta_train.curvature`):
J_i = I - α H_i (α the inner step size, ``step_size``), H_i the Hessian of task i's REINFORCE
loss at theta, and F_i the Hessian of its KL at theta_i' (where the KL's gradient vanishes, so
F_i is exactly the Gauss-Newton matrix of the mean plus the log-std's diagonal). Each conjugate-gradient iteration needs both products
for every task. Autograd gets them by differentiating a retained double-backward graph; here
they are written out for the MLP (forward-mode tangents and Pearlmutter's R-operator on the
backward pass, Pearlmutter 1994, "Fast exact multiplication by the Hessian"), with the forward
pass and the loss gradient's backward pass computed once per meta-step and reused by every
product. Same mathematics, float32 rounding apart (tests/test_derivatives.py holds them equal
to autograd's products).

Parameters follow :func:`controller.policy.mean_action`: ``hidden.{l}.weight`` [out, in],
``hidden.{l}.bias``, ``mean.weight``, ``mean.bias``, ``log_std``; inputs are packed steps
[N, O] (no padding).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from controller.policy import Params, PolicySpec


def _layer_names(spec: PolicySpec) -> list[tuple[str, str]]:
    """(weight, bias) names in forward order, the output layer last."""
    names = [(f"hidden.{i}.weight", f"hidden.{i}.bias") for i in range(len(spec.hidden_sizes))]
    return [*names, ("mean.weight", "mean.bias")]


@dataclass(frozen=True)
class Forward:
    """The policy's forward pass on packed inputs, kept for derivative products."""

    weights: list[torch.Tensor]
    """Per layer [out, in], the output layer last."""
    inputs: list[torch.Tensor]
    """Per layer, its input [N, in]: the observations, then each hidden activation."""
    slopes: list[torch.Tensor]
    """Per hidden layer, the activation's derivative at its pre-activation [N, width]."""
    curvatures: list[torch.Tensor] | None
    """Per hidden layer, the activation's second derivative (None for ReLU: zero a.e.)."""
    mean: torch.Tensor
    """[N, A]"""
    log_std: torch.Tensor
    """[A]"""


def forward(spec: PolicySpec, params: Params, observations: torch.Tensor) -> Forward:
    """Run the mean network on [N, O] and keep what the products need (no autograd graph)."""
    with torch.no_grad():
        layers = _layer_names(spec)
        x = observations
        inputs, slopes, curvatures = [], [], []
        for weight, bias in layers[:-1]:
            inputs.append(x)
            z = torch.nn.functional.linear(x, params[weight], params[bias])
            if spec.activation == "relu":
                x = torch.relu(z)
                slopes.append((z > 0).to(z.dtype))
            else:
                x = torch.tanh(z)
                slope = 1.0 - x.square()
                slopes.append(slope)
                curvatures.append(-2.0 * x * slope)
        inputs.append(x)
        weight, bias = layers[-1]
        mean = torch.nn.functional.linear(x, params[weight], params[bias])
        return Forward(
            weights=[params[w].detach() for w, _ in layers],
            inputs=inputs,
            slopes=slopes,
            curvatures=curvatures if spec.activation == "tanh" else None,
            mean=mean,
            log_std=params["log_std"].detach(),
        )


def mean_tangent(
    run: Forward, tangent: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Forward-mode derivative of the mean along (dW, db) per layer: (d mean [N, A], the
    pre-activations' and the activations' tangents per hidden layer [N, width])."""
    d_pre: list[torch.Tensor] = []
    d_hidden: list[torch.Tensor] = []
    for layer, (d_weight, d_bias) in enumerate(tangent):
        dz = torch.addmm(d_bias, run.inputs[layer], d_weight.t())
        if d_hidden:
            dz = torch.addmm(dz, d_hidden[-1], run.weights[layer].t())
        if layer < len(run.slopes):
            d_pre.append(dz)
            d_hidden.append(dz * run.slopes[layer])
        else:
            return dz, d_pre, d_hidden
    raise AssertionError("tangent lists no output layer")


def mean_cotangent(
    run: Forward, grad_mean: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    """Backward pass of ``grad_mean`` [N, A]: ((dW, db) per layer, the hidden pre-activations'
    gradients [N, width] per hidden layer)."""
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    grad_pre: list[torch.Tensor] = []
    g = grad_mean
    for layer in range(len(run.weights) - 1, -1, -1):
        grads.append((g.t() @ run.inputs[layer], g.sum(0)))
        if layer == 0:
            break
        g = (g @ run.weights[layer]) * run.slopes[layer - 1]
        grad_pre.append(g)
    return grads[::-1], grad_pre[::-1]


def _split(spec: PolicySpec, vector: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(vector[w], vector[b]) for w, b in _layer_names(spec)]


def _join(
    spec: PolicySpec, layers: list[tuple[torch.Tensor, torch.Tensor]], log_std: torch.Tensor
) -> Params:
    out: Params = {}
    for (w, b), (d_weight, d_bias) in zip(_layer_names(spec), layers, strict=True):
        out[w], out[b] = d_weight, d_bias
    out["log_std"] = log_std
    return out


def kl_hessian_product(spec: PolicySpec, run: Forward, vector: Params, scale: float) -> Params:
    """``scale`` x the Hessian of sum_n KL(pi_old(.|s_n) || pi(.|s_n)) at pi = pi_old, times v.

    At the old policy the KL's gradient is zero, so the Hessian is the Gauss-Newton matrix
    J_mean^T diag(exp(-2 log_std)) J_mean plus 2 N on the log-std's diagonal (their cross
    terms vanish there).
    """
    with torch.no_grad():
        d_mean, _, _ = mean_tangent(run, _split(spec, vector))
        precision = torch.exp(-2.0 * run.log_std)
        layers, _ = mean_cotangent(run, d_mean * (precision * scale))
        log_std = vector["log_std"] * (2.0 * run.mean.shape[0] * scale)
        return _join(spec, layers, log_std)


@dataclass(frozen=True)
class LossCurvature:
    """A task's REINFORCE loss at theta, ready for Hessian-vector products (see
    :func:`loss_hessian_product`)."""

    run: Forward
    residual: torch.Tensor
    """[N, A] (a - mean) * exp(-2 log_std)."""
    weight: torch.Tensor
    """[N, 1] advantage / N: the loss is -sum_n weight_n log pi(a_n | s_n)."""
    grad_mean: torch.Tensor
    """[N, A] the loss's gradient w.r.t. the mean."""
    grad_pre: list[torch.Tensor]
    """Per hidden layer, the loss's gradient w.r.t. its pre-activation [N, width]."""
    bends: list[torch.Tensor] | None
    """Per hidden layer, the loss's gradient w.r.t. its activation times the activation's second
    derivative [N, width] (None for ReLU): the network's own curvature in every product."""


def loss_curvature(
    spec: PolicySpec,
    params: Params,
    observations: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
) -> LossCurvature:
    """Forward and backward pass of -mean_n A_n log pi(a_n | s_n) on packed steps [N, ...]."""
    run = forward(spec, params, observations)
    with torch.no_grad():
        residual = (actions - run.mean) * torch.exp(-2.0 * run.log_std)
        weight = (advantages / advantages.shape[0]).unsqueeze(1)
        grad_mean = -weight * residual
        _, grad_pre = mean_cotangent(run, grad_mean)
        bends = None
        if run.curvatures is not None:
            # the gradient w.r.t. hidden activation l is the next layer's input gradient
            outputs = [*grad_pre[1:], grad_mean]
            bends = [
                (g @ run.weights[layer + 1]) * run.curvatures[layer]
                for layer, g in enumerate(outputs)
            ]
        return LossCurvature(run, residual, weight, grad_mean, grad_pre, bends)


def loss_hessian_product(spec: PolicySpec, loss: LossCurvature, vector: Params) -> Params:
    """Hessian of the REINFORCE loss at theta times v: Pearlmutter's R-operator applied to the
    loss's backward pass (exact second derivatives, the network's own curvature included)."""
    run = loss.run
    with torch.no_grad():
        tangent = _split(spec, vector)
        d_mean, d_pre, d_inputs = mean_tangent(run, tangent)
        v_log_std = vector["log_std"]
        precision = torch.exp(-2.0 * run.log_std)
        # gradient w.r.t. the mean: -w (a - mu) e^{-2s}; its directional derivative
        r_grad_mean = loss.weight * (d_mean * precision + 2.0 * loss.residual * v_log_std)
        # gradient w.r.t. log_std: -sum_n w_n ((a - mu)^2 e^{-2s} - 1); its derivative
        residual_raw = loss.residual / precision
        r_log_std = 2.0 * (loss.weight * loss.residual * (d_mean + residual_raw * v_log_std)).sum(0)
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        r_g = r_grad_mean
        g = loss.grad_mean
        for layer in range(len(run.weights) - 1, -1, -1):
            r_weight = r_g.t() @ run.inputs[layer]
            if layer > 0:
                r_weight = torch.addmm(r_weight, g.t(), d_inputs[layer - 1])
            layers.append((r_weight, r_g.sum(0)))
            if layer == 0:
                break
            # input gradient g W and its derivative r_g W + g dW, through the activation
            r_input = torch.addmm(r_g @ run.weights[layer], g, tangent[layer][0])
            r_g = r_input * run.slopes[layer - 1]
            if loss.bends is not None:
                r_g = torch.addcmul(r_g, loss.bends[layer - 1], d_pre[layer - 1])
            g = loss.grad_pre[layer - 1]
        return _join(spec, layers[::-1], r_log_std)


def product_multiply_adds(spec: PolicySpec) -> tuple[int, int]:
    """Multiply-adds of the matrix products, per input row, of one :func:`loss_hessian_product`
    and of one :func:`kl_hessian_product`, as written here (the elementwise work is left out).

    A layer of ``m`` = in x out weights costs: tangent 1 product (the first layer) or 2 (its
    input's tangent too); backward with the R-operator 1 or 4 more (the loss) and 1 or 2 (the
    KL's Gauss-Newton product). ``python -m bench meta`` turns this into the floor of a meta-step's
    Hessian-vector products at the machine's measured matrix-product rate.
    """
    sizes = [spec.observation_size, *spec.hidden_sizes, spec.action_size]
    layers = [a * b for a, b in itertools.pairwise(sizes)]
    first, rest = layers[0], sum(layers[1:])
    return 2 * first + 6 * rest, 2 * first + 4 * rest
