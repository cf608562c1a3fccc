"""The serving side of a policy: its ONNX graphs, and onnxruntime sessions ready to act.

:func:`policy_to_onnx` is the artifact's exporter (a self-contained graph, parameters as
initializers) and :func:`verify_onnx_matches` checks a stored graph against its parameters.
The runtime serves :func:`serving_graph` instead, the same operators with the parameters as
inputs: one :class:`ServingSession` per architecture, shared by every :class:`ServingPolicy`
of it. A ServingPolicy is what the runtime swaps atomically: parameters, their bound arrays
and buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from controller.policy import Params, PolicySpec

# ONNX: opset 17 and IR version 8 are read by every onnxruntime since 1.14 (2023), so an artifact
# also serves on a robot with an older runtime; Gemm, Relu and Tanh are all it needs. The
# ``log_std`` output is the initializer itself (no node computes it).
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


def policy_to_onnx(spec: PolicySpec, params: Mapping[str, torch.Tensor]) -> onnx.ModelProto:
    """The mean network and log-std as a self-contained ONNX graph (the artifact's ``policy.onnx``).

    Input ``observation`` float32 [batch, O]; outputs ``mean`` float32 [batch, A] and
    ``log_std`` float32 [A]. Initializers carry the parameter names of ``Params``.
    """
    initializers = [
        numpy_helper.from_array(params[n].detach().numpy(), n) for n in spec.parameter_shapes
    ]
    outputs = [
        _value_info("mean", ["batch", spec.action_size]),
        _value_info("log_std", [spec.action_size]),
    ]
    return _policy_model(spec, [_observation_input(spec)], outputs, initializers)


def serving_graph(spec: PolicySpec) -> onnx.ModelProto:
    """The runtime's graph of an architecture: the parameters are inputs, not initializers.

    Inputs ``observation`` float32 [batch, O] and every parameter of the mean network, named
    and shaped as in ``Params`` (``hidden.{i}.weight`` [h_i, h_{i-1}], ...); output ``mean``
    float32 [batch, A]. The operators are :func:`policy_to_onnx`'s, so one session per
    architecture serves any parameter set of it. ``log_std`` is left out: the runtime reads it
    from the parameters (it only scales the noise).
    """
    names = mean_parameter_names(spec)
    inputs = [_observation_input(spec)]
    inputs += [_value_info(n, list(spec.parameter_shapes[n])) for n in names]
    outputs = [_value_info("mean", ["batch", spec.action_size])]
    return _policy_model(spec, inputs, outputs, [])


def mean_parameter_names(spec: PolicySpec) -> list[str]:
    """The parameters of the mean network (all but ``log_std``), in forward order."""
    return [n for n in spec.parameter_shapes if n != "log_std"]


def _observation_input(spec: PolicySpec) -> onnx.ValueInfoProto:
    return _value_info("observation", ["batch", spec.observation_size])


def _policy_model(
    spec: PolicySpec,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> onnx.ModelProto:
    """The MLP's operators (Gemm + activation per hidden layer, Gemm for the mean) as a model."""
    nodes, x = [], "observation"
    activation = {"relu": "Relu", "tanh": "Tanh"}[spec.activation]
    for i in range(len(spec.hidden_sizes)):
        w, b = f"hidden.{i}.weight", f"hidden.{i}.bias"
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"h{i}.linear"], transB=1))
        nodes.append(helper.make_node(activation, [f"h{i}.linear"], [f"h{i}"]))
        x = f"h{i}"
    nodes.append(helper.make_node("Gemm", [x, "mean.weight", "mean.bias"], ["mean"], transB=1))
    graph = helper.make_graph(nodes, "adaptctl_policy", inputs, outputs, initializers)
    return helper.make_model(
        graph,
        producer_name="adaptctl",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )


def _value_info(name: str, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _signature(values: Any) -> list[tuple[str, int, list[str | int]]]:
    """(name, element type, shape with symbolic dims as strings) of graph inputs/outputs."""
    out = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        out.append((value.name, tensor.elem_type, dims))
    return out


def _operators(model: onnx.ModelProto) -> list[tuple[Any, ...]]:
    return [
        (
            n.op_type,
            list(n.input),
            list(n.output),
            {a.name: helper.get_attribute_value(a) for a in n.attribute},
        )
        for n in model.graph.node
    ]


def verify_onnx_matches(spec: PolicySpec, params: Mapping[str, torch.Tensor], data: bytes) -> None:
    """ValueError unless ``data`` is the graph :func:`policy_to_onnx` makes of these params.

    Compares the interface, the sequence of operators and every initializer bit for bit, which
    catches an ONNX file paired with the wrong parameters without running it.
    """
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as error:  # protobuf DecodeError, onnx ValidationError
        raise ValueError(f"not a valid ONNX model: {error}") from error
    expected = policy_to_onnx(spec, params)
    for part in ("input", "output"):
        got = _signature(getattr(model.graph, part))
        want = _signature(getattr(expected.graph, part))
        if got != want:
            raise ValueError(f"graph {part}s are {got}, the policy spec needs {want}")
    got_ops, want_ops = _operators(model), _operators(expected)
    if got_ops != want_ops:
        raise ValueError(f"graph operators {got_ops} differ from the policy spec's {want_ops}")
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if set(initializers) != set(spec.parameter_shapes):
        raise ValueError(f"graph initializers {sorted(initializers)} are not the policy's")
    for name, array in initializers.items():
        if not np.array_equal(array, params[name].detach().numpy()):
            raise ValueError(f"initializer {name!r} differs from {name!r} in the parameters")


def policy_id(params: Params) -> str:
    """Short content hash of a parameter set: which policy collected an episode."""
    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].detach().numpy().tobytes())
    return digest.hexdigest()[:16]


def architecture(spec: PolicySpec) -> tuple[int, int, tuple[int, ...], str]:
    """What fixes the serving graph of a spec: sizes and activation (not ``init_log_std``)."""
    return spec.observation_size, spec.action_size, spec.hidden_sizes, spec.activation


class ServingSession:
    """The onnxruntime session of one architecture, shared by every policy of it.

    The graph (:func:`serving_graph`) takes the parameters as inputs, so an adaptation or a
    swap with the same architecture only binds new arrays to this session instead of building
    an ``InferenceSession`` (docs/artifact.md section 6 gives the times of both). onnxruntime's ``run`` is thread-safe for concurrent calls with
    different bindings, which is what two policies of one session do.
    """

    def __init__(self, spec: PolicySpec, threads: int) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        model = serving_graph(spec).SerializeToString()
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.parameter_names = mean_parameter_names(spec)
        """The graph's parameter inputs, in forward order."""


class ServingPolicy:
    """One policy ready to serve: its parameters bound to a shared session, and act buffers.

    The parameters are copied to fresh float32 numpy arrays, bound once; the IOBinding reads
    its observation from ``input`` and writes ``mean`` into ``output`` in place, allocating
    nothing, which is faster than ``session.run`` (bench/runtime_bench.py). Building one costs no new session (see
    :class:`ServingSession`).
    """

    def __init__(self, shared: ServingSession, params: Params, generation: int) -> None:
        spec = shared.spec
        self.params = params
        self.policy_id = policy_id(params)
        self.generation = generation
        self.session = shared.session
        # Copies: the arrays the session reads stay what was checked, whatever happens to params.
        self.arrays = {
            n: np.array(params[n].detach().numpy(), dtype=np.float32, order="C", copy=True)
            for n in shared.parameter_names
        }
        """Parameter name -> float32 array bound to the session ([h_i, h_{i-1}], [h_i], ...)."""
        self.std = np.exp(params["log_std"].detach().numpy()).astype(np.float32)
        self.input = np.zeros((1, spec.observation_size), dtype=np.float32)
        self.output = np.zeros((1, spec.action_size), dtype=np.float32)
        self._output_value = ort.OrtValue.ortvalue_from_numpy(self.output)
        self.binding = self._parameters_bound()
        self.binding.bind_cpu_input("observation", self.input)
        self.binding.bind_ortvalue_output("mean", self._output_value)
        self._batch_binding = self._parameters_bound()
        self._batch_output = np.zeros((0, spec.action_size), dtype=np.float32)
        # Smoke test before anyone is served by it: it runs and gives a finite mean.
        self.session.run_with_iobinding(self.binding)
        if not np.isfinite(self.output).all():
            raise ValueError("the policy gives a non-finite mean for a zero observation")

    def _parameters_bound(self) -> ort.IOBinding:
        """A new IOBinding of the session with this policy's parameter arrays bound."""
        binding = self.session.io_binding()
        for name, array in self.arrays.items():
            binding.bind_cpu_input(name, array)
        return binding

    def batch_mean(self, observations: np.ndarray) -> np.ndarray:
        """[N, O] float32 -> [N, A] float32; safe to call from any thread."""
        feeds = {"observation": observations, **self.arrays}
        return np.asarray(self.session.run(["mean"], feeds)[0])

    def act_batch_mean(self, observations: np.ndarray) -> np.ndarray:
        """[N, O] float32 C-contiguous -> [N, A] float32 (a new array); the serving thread only.

        Through an IOBinding with the parameters bound once and the output buffer kept while
        N stays the same (the sim loop's case): faster than ``batch_mean``, whose
        ``session.run`` converts seven parameter feeds every call.
        """
        if self._batch_output.shape[0] != observations.shape[0]:
            self._batch_output = np.zeros(
                (observations.shape[0], self.output.shape[1]), dtype=np.float32
            )
            value = ort.OrtValue.ortvalue_from_numpy(self._batch_output)
            self._batch_binding.bind_ortvalue_output("mean", value)
        self._batch_binding.bind_cpu_input("observation", observations)
        self.session.run_with_iobinding(self._batch_binding)
        return self._batch_output.copy()
