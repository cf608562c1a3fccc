"""A training run's directory: its config, log, checkpoint and artifact, and resuming from it.

``RUN/config.yaml`` is the config the run was started with, ``RUN/log.jsonl`` one record per
iteration, ``RUN/checkpoint/`` the latest state (``state.json`` names its tensors file and is
replaced last, so a crash leaves the previous checkpoint usable), ``RUN/artifact/`` the best
iteration so far as an artifact (written by ``meta_train.trainer.export``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import yaml

from controller.policy import Params, PolicySpec, init_params
from meta_train.config import TrainConfig

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.yaml"
ARTIFACT_DIR = "artifact"


class RunDirError(RuntimeError):
    """The run directory holds something that conflicts with the requested run."""


@dataclass
class TrainState:
    """What a checkpoint holds: enough to continue exactly where the run stopped."""

    iteration: int
    """The next iteration to run."""
    params: Params
    best_params: Params
    best_return: float
    best_iteration: int


def save_checkpoint(run_dir: Path, state: TrainState) -> None:
    """Write the state so that a crash at any point leaves the previous checkpoint usable."""
    directory = run_dir / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{state.iteration:06d}"
    tensors = {f"params/{k}": v for k, v in state.params.items()}
    tensors.update({f"best/{k}": v for k, v in state.best_params.items()})
    safetensors.torch.save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()}, directory / f"{tag}.safetensors"
    )
    meta = {
        "iteration": state.iteration,
        "best_return": state.best_return,
        "best_iteration": state.best_iteration,
        "tensors": f"{tag}.safetensors",
    }
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, directory / "state.json")  # the commit point
    for old in directory.glob("*.safetensors"):
        if old.name != meta["tensors"]:
            old.unlink()


def load_checkpoint(run_dir: Path, spec: PolicySpec) -> TrainState:
    directory = run_dir / CHECKPOINT_DIR
    try:
        meta = json.loads((directory / "state.json").read_text())
        # Fresh (aligned) copies: BLAS results can depend on the alignment of their inputs,
        # and a resumed run must compute exactly what an uninterrupted one does.
        loaded = safetensors.torch.load_file(directory / meta["tensors"])
        tensors = {k: v.clone() for k, v in loaded.items()}
    except (OSError, ValueError, KeyError) as error:
        raise RunDirError(f"cannot resume from {directory}: {error}") from error
    # In the spec's order, not the file's (sorted): flattening follows dict order, and the
    # order of a sum changes its rounding.
    params = {k: tensors[f"params/{k}"] for k in spec.parameter_shapes}
    best = {k: tensors[f"best/{k}"] for k in spec.parameter_shapes}
    return TrainState(meta["iteration"], params, best, meta["best_return"], meta["best_iteration"])


def initial_params(config: TrainConfig, spec: PolicySpec) -> Params:
    """A fresh initialization from ``config.seed``, or ``config.init_from``'s parameters.

    An oracle may start from a policy without task features (its observation is the same
    observation with the task's features appended): the first layer gets zero weights for the
    appended inputs, so the oracle starts out acting exactly as the given policy.
    """
    fresh = init_params(spec, config.seed)
    if config.init_from is None:
        return fresh
    from controller.artifact import load_artifact

    artifact = load_artifact(config.init_from)
    params = {k: v.detach().clone() for k, v in artifact.params.items()}
    first = "hidden.0.weight" if "hidden.0.weight" in fresh else "mean.weight"
    given, wanted_first = tuple(params.get(first, torch.empty(0)).shape), tuple(fresh[first].shape)
    if len(given) == 2 and given[0] == wanted_first[0] and given[1] < wanted_first[1]:
        pad = torch.zeros(given[0], wanted_first[1] - given[1], dtype=params[first].dtype)
        params[first] = torch.cat([params[first], pad], dim=1)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    wanted = {k: tuple(v.shape) for k, v in fresh.items()}
    if shapes != wanted:
        raise RunDirError(
            f"init_from {config.init_from}: its policy's parameters {shapes} do not match this "
            f"run's layout {wanted} (hidden sizes and the action must match; only the input may "
            "be narrower, by the oracle's task features)"
        )
    return params


def prepare_run_dir(
    config: TrainConfig, run_dir: Path, spec: PolicySpec, resume: bool
) -> tuple[TrainState, list[float]]:
    """The state to start from, and the training return of each iteration already logged."""
    config_text = yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=True)
    has_checkpoint = (run_dir / CHECKPOINT_DIR / "state.json").exists()
    if not resume:
        if has_checkpoint:
            raise RunDirError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(config_text)
        (run_dir / LOG_FILE).write_text("")
        params = initial_params(config, spec)
        return TrainState(0, params, params, -float("inf"), -1), []
    if not has_checkpoint:
        raise RunDirError(f"nothing to resume in {run_dir}: no checkpoint/state.json")
    saved = (run_dir / CONFIG_FILE).read_text()
    if saved != config_text and not same_config(run_dir / CONFIG_FILE, config):
        raise RunDirError(
            f"the config differs from the one {run_dir} was started with ({run_dir / CONFIG_FILE});"
            " resume with that config, or start a new run"
        )
    (run_dir / CONFIG_FILE).write_text(config_text)  # e.g. the extended iteration count
    state = load_checkpoint(run_dir, spec)
    returns = truncate_log(run_dir / LOG_FILE, state.iteration)
    upto_best = returns[: state.best_iteration + 1]
    if state.best_iteration >= 0 and len(upto_best) == state.best_iteration + 1:
        # The best iteration's score under this run's window, which may have changed.
        state.best_return = float(np.mean(upto_best[-config.selection_window :]))
    return state, returns


# Fields that change no iteration's result: a resumed run may be extended (more iterations),
# checkpointed more or less often, or keep its best iteration by another window.
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "selection_window")


def same_config(path: Path, config: TrainConfig) -> bool:
    """Whether the saved config is ``config`` once fields added since it was written take their
    defaults (e.g. ``meta.inner_steps``), up to the fields in ``_RESUMABLE_CHANGES``."""
    try:
        saved = TrainConfig.from_yaml(path)
    except ValueError:  # ConfigError: it no longer validates
        return False
    return saved.model_copy(update={k: getattr(config, k) for k in _RESUMABLE_CHANGES}) == config


def truncate_log(path: Path, next_iteration: int) -> list[float]:
    """Drop log records of iterations after the checkpoint (they will be run again); returns
    the training (post-adaptation) return of each record kept, in order."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = [(line, json.loads(line)) for line in lines if line]
    kept = [(line, record) for line, record in records if record["iteration"] < next_iteration]
    path.write_text("".join(line + "\n" for line, _ in kept))
    return [record["return_after"] for _, record in kept]
