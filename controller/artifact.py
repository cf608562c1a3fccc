"""The artifact: a meta-trained (or any) initialization as a self-describing, versioned bundle.

A directory holding three files (the format is specified in ``docs/artifact.md``):

- ``policy.onnx``: the mean network and the log-std, for serving with onnxruntime;
- ``params.safetensors``: the same parameters for adaptation (a non-pickle format);
- ``metadata.json``: format version, family, observation/action layout, policy spec,
  adaptation settings, training config, creation time, the size and SHA-256 of both files and a
  digest of the metadata itself (the artifact's id).

:func:`load_artifact` trusts nothing: every check names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.adaptation import AdaptationSettings
from controller.policy import Params, PolicySpec
from controller.serving import policy_to_onnx, verify_onnx_matches

FORMAT_NAME: Final = "adaptctl-artifact"
FORMAT_VERSION = 2
"""The newest version this module reads. It writes the lowest one that holds the artifact:
1, unless the adaptation step changes only some parameters (``adapted_parameters``, added in 2),
so that an artifact a version-1 reader can use stays readable by it."""
ONNX_FILE = "policy.onnx"
PARAMS_FILE = "params.safetensors"
METADATA_FILE = "metadata.json"
CONTENT_FILES = (ONNX_FILE, PARAMS_FILE)


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message names the file and the problem."""


class IOLayout(BaseModel):
    """What the policy reads and commands: the robot-facing contract of an artifact."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observation_size: int = Field(ge=1, description="O, the length of an observation.")
    action_size: int = Field(ge=1, description="A, the length of an action.")
    observation_names: tuple[str, ...] = Field(description="One name per observation entry.")
    action_names: tuple[str, ...] = Field(description="One name per actuator.")
    action_low: tuple[float, ...] = Field(description="Lower actuator bound per action entry.")
    action_high: tuple[float, ...] = Field(description="Upper actuator bound per action entry.")

    @model_validator(mode="after")
    def _consistent(self) -> IOLayout:
        if len(self.observation_names) != self.observation_size:
            raise ValueError(
                f"{len(self.observation_names)} observation names for observation_size "
                f"{self.observation_size}"
            )
        for name in ("action_names", "action_low", "action_high"):
            if len(getattr(self, name)) != self.action_size:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, not {self.action_size}"
                )
        low, high = np.asarray(self.action_low), np.asarray(self.action_high)
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise ValueError(f"action bounds must be finite with low <= high: {low}, {high}")
        return self


class ArtifactAdaptation(BaseModel):
    """How the initialization is meant to be adapted (the paper's test-time protocol)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    episodes_per_step: int = Field(ge=1, description="K, on-policy episodes per gradient step.")
    batch_unit: Literal["episodes", "steps"] = Field(
        default="episodes",
        description="'episodes': a step adapts on K episodes; 'steps': on whole episodes until "
        "they hold K x horizon time steps (more episodes where they end early).",
    )
    horizon: int = Field(ge=1, description="Steps per episode (episodes are padded to it).")
    settings: AdaptationSettings = Field(description="Step sizes, discount, GAE, baseline.")
    max_kl: float | None = Field(
        default=None,
        gt=0.0,
        description="Bound on the mean KL(pre || adapted) of one step for the runtime to accept "
        "it, as measured by meta-training (e.g. twice the largest KL of a step on its "
        "evaluation tasks); None: the controller's default.",
    )


class FileRecord(BaseModel):
    """Size and SHA-256 of one content file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0, description="Length of the file in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the file.")


class ArtifactMetadata(BaseModel):
    """Everything in ``metadata.json`` but the digest (which is computed over this)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["adaptctl-artifact"] = Field(description="Always 'adaptctl-artifact'.")
    format_version: int = Field(description="Version of this format (see docs/artifact.md).")
    family: str = Field(description="Task family the policy was trained on.")
    layout: IOLayout = Field(description="Observation and action layout.")
    policy: PolicySpec = Field(description="Architecture of the Gaussian MLP.")
    adaptation: ArtifactAdaptation = Field(description="Defaults for test-time adaptation.")
    training: dict[str, Any] = Field(description="The training config, free-form.")
    created: str = Field(description="Creation time, ISO 8601 UTC.")
    files: dict[str, FileRecord] = Field(description="Size and SHA-256 of each content file.")


@dataclass(frozen=True)
class Artifact:
    """A loaded and verified artifact."""

    path: Path
    metadata: ArtifactMetadata
    digest: str
    """Hex SHA-256 of the canonical metadata JSON: identifies the whole bundle."""
    params: Params
    """The policy parameters (float32 CPU tensors, not requiring grad)."""
    onnx_model: bytes
    """The serialized ``policy.onnx``, ready for an onnxruntime session."""

    @property
    def spec(self) -> PolicySpec:
        return self.metadata.policy

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with numpy parameters: unpickling a torch tensor goes through
        ``torch.load`` per tensor (about 0.4 ms each), which the verifier's answer to a swap
        would cost the serving thread; a numpy array is its bytes."""
        arrays = {name: value.detach().numpy() for name, value in self.params.items()}
        return _artifact_from_arrays, (
            self.path,
            self.metadata,
            self.digest,
            arrays,
            self.onnx_model,
        )

    @property
    def layout(self) -> IOLayout:
        return self.metadata.layout


def _artifact_from_arrays(
    path: Path, metadata: ArtifactMetadata, digest: str, arrays: dict[str, Any], onnx: bytes
) -> Artifact:
    """The unpickling half of :meth:`Artifact.__reduce__`."""
    params = {name: torch.from_numpy(array) for name, array in arrays.items()}
    return Artifact(path, metadata, digest, params, onnx)


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(
    path: str | Path,
    spec: PolicySpec,
    params: Params,
    *,
    family: str,
    layout: IOLayout,
    adaptation: ArtifactAdaptation,
    training: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Write the bundle to directory ``path`` atomically and return it as loaded.

    The files are written into a temporary sibling directory and renamed into place, so a
    crash never leaves a half-written artifact under ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists; pass overwrite=True to replace it")
    if (spec.observation_size, spec.action_size) != (layout.observation_size, layout.action_size):
        raise ArtifactError(
            f"policy spec sizes (O={spec.observation_size}, A={spec.action_size}) differ from "
            f"the layout's (O={layout.observation_size}, A={layout.action_size})"
        )
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in params.items()}
    _check_params(spec, tensors, "the parameters given to save_artifact")
    contents = {
        ONNX_FILE: policy_to_onnx(spec, tensors).SerializeToString(),
        PARAMS_FILE: safetensors.torch.save(tensors),
    }
    restricted = adaptation.settings.adapted_parameters is not None
    if restricted:
        check_adapted_names(spec, adaptation.settings, "the adaptation given to save_artifact")
    metadata = ArtifactMetadata(
        format=FORMAT_NAME,
        format_version=2 if restricted else 1,
        family=family,
        layout=layout,
        policy=spec,
        adaptation=adaptation,
        training=dict(training or {}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        files={n: FileRecord(size=len(b), sha256=_sha256(b)) for n, b in contents.items()},
    )
    payload = json.loads(metadata.model_dump_json())
    if not restricted:  # not a field of format version 1
        del payload["adaptation"]["settings"]["adapted_parameters"]
    document = {**payload, "digest": _sha256(_canonical(payload))}
    contents[METADATA_FILE] = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    try:
        for name, data in contents.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_artifact(path)


def load_artifact(path: str | Path, verify_onnx: bool = True) -> Artifact:
    """Load the bundle in ``path`` and verify it; :class:`ArtifactError` says what is wrong.

    Checks, in order: the directory and its files exist; metadata.json parses, is of a known
    format version and validates; its digest matches (metadata not edited); each content file
    has the recorded size (not truncated) and SHA-256 (not corrupt or tampered); the parameters
    match the policy spec and are finite; with ``verify_onnx`` the ONNX graph is well formed,
    has the documented inputs and outputs and holds exactly these parameters.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"no artifact at {path}: not a directory")
    missing = [n for n in (METADATA_FILE, *CONTENT_FILES) if not (path / n).is_file()]
    if missing:
        raise ArtifactError(f"artifact {path} is incomplete: missing {', '.join(missing)}")
    metadata, digest = _read_metadata(path)
    try:
        contents = {name: (path / name).read_bytes() for name in CONTENT_FILES}
    except OSError as error:
        raise ArtifactError(f"cannot read artifact {path}: {error}") from error
    for name, data in contents.items():
        record = metadata.files.get(name)
        if record is None:
            raise ArtifactError(f"{path / METADATA_FILE} records no hash for {name}")
        if len(data) != record.size:
            raise ArtifactError(
                f"{path / name} is {len(data)} bytes, the metadata says {record.size}: "
                "the file is truncated or was replaced"
            )
        if _sha256(data) != record.sha256:
            raise ArtifactError(
                f"{path / name} does not match its SHA-256 in the metadata: the file is "
                "corrupt or was modified after export"
            )
    params = _parse_params(path / PARAMS_FILE, contents[PARAMS_FILE])
    _check_params(metadata.policy, params, str(path / PARAMS_FILE))
    check_adapted_names(metadata.policy, metadata.adaptation.settings, str(path / METADATA_FILE))
    if verify_onnx:
        try:
            verify_onnx_matches(metadata.policy, params, contents[ONNX_FILE])
        except ValueError as error:
            raise ArtifactError(f"{path / ONNX_FILE}: {error}") from error
    return Artifact(path, metadata, digest, params, contents[ONNX_FILE])


def check_adapted_names(spec: PolicySpec, settings: AdaptationSettings, where: str) -> None:
    """ArtifactError naming the ``adapted_parameters`` that ``spec``'s policy lacks."""
    names = settings.adapted_parameters or ()
    unknown = [name for name in names if name not in spec.parameter_shapes]
    if unknown:
        raise ArtifactError(
            f"{where}: adapted_parameters {unknown} are not parameters of the policy "
            f"({', '.join(spec.parameter_shapes)})"
        )


def _read_metadata(path: Path) -> tuple[ArtifactMetadata, str]:
    file = path / METADATA_FILE
    try:
        document = json.loads(file.read_bytes())
    except OSError as error:
        raise ArtifactError(f"cannot read {file}: {error}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{file} is not valid JSON (truncated or corrupt): {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{file} is not adaptctl artifact metadata (no format {FORMAT_NAME!r})")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{file} has an unknown format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{file} has format version {version}, newer than this adaptctl reads "
            f"({FORMAT_VERSION}); upgrade adaptctl to load it"
        )
    digest = document.pop("digest", None)
    if digest != _sha256(_canonical(document)):
        raise ArtifactError(
            f"{file} does not match its digest: the metadata was edited after export "
            "(re-export the artifact instead of editing it)"
        )
    settings = (document.get("adaptation") or {}).get("settings") or {}
    if version < 2 and isinstance(settings, dict) and "adapted_parameters" in settings:
        raise ArtifactError(
            f"{file} has adaptation.settings.adapted_parameters, which format version "
            f"{version} does not have (it came in version 2)"
        )
    try:
        return ArtifactMetadata.model_validate(document), str(digest)
    except ValidationError as error:
        raise ArtifactError(f"{file} is not valid artifact metadata:\n{error}") from error


def _parse_params(file: Path, data: bytes) -> Params:
    try:
        return dict(safetensors.torch.load(data))
    except Exception as error:  # safetensors raises its own SafetensorError on a bad header
        raise ArtifactError(f"{file} is not a readable safetensors file: {error}") from error


def _check_params(spec: PolicySpec, params: Mapping[str, torch.Tensor], where: str) -> None:
    expected = spec.parameter_shapes
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ArtifactError(
            f"{where} do not match the policy spec: missing {missing}, unexpected {extra}"
        )
    for name, shape in expected.items():
        tensor = params[name]
        if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
            raise ArtifactError(
                f"{where}: {name!r} is {tensor.dtype} {tuple(tensor.shape)}, the policy spec "
                f"needs float32 {shape}"
            )
        if not torch.isfinite(tensor).all():
            raise ArtifactError(f"{where}: {name!r} holds non-finite values")


def check_compatible(current: Artifact, candidate: Artifact) -> None:
    """Refuse (ArtifactError) a candidate whose layout differs from the serving artifact's.

    The layout is the robot's contract: same observation and action entries, in the same
    order, and the same actuator bounds. The architecture, family and settings may differ.
    """
    old, new = current.layout, candidate.layout
    problems = [
        f"{field}: {getattr(old, field)} -> {getattr(new, field)}"
        for field in IOLayout.model_fields
        if getattr(old, field) != getattr(new, field)
    ]
    if problems:
        raise ArtifactError(
            f"artifact {candidate.path} is incompatible with the serving one "
            f"({current.path}): " + "; ".join(problems)
        )
