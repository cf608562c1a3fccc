"""The artifact bundle: round trip, ONNX/torch parity, and every way a bundle can be refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import pytest
import torch

from controller.adaptation import AdaptationSettings
from controller.artifact import (
    FORMAT_VERSION,
    ArtifactAdaptation,
    ArtifactError,
    IOLayout,
    check_compatible,
    load_artifact,
    save_artifact,
)
from controller.policy import PolicySpec, init_params, mean_action
from controller.serving import policy_to_onnx

OBS, ACT = 7, 3


def layout(high: float = 1.0) -> IOLayout:
    return IOLayout(
        observation_size=OBS,
        action_size=ACT,
        observation_names=tuple(f"joint:{i}" for i in range(OBS)),
        action_names=tuple(f"motor:{i}" for i in range(ACT)),
        action_low=(-high,) * ACT,
        action_high=(high,) * ACT,
    )


ADAPTATION = ArtifactAdaptation(episodes_per_step=5, horizon=30, settings=AdaptationSettings())


def make(path: Path, seed: int = 0, spec: PolicySpec | None = None, high: float = 1.0) -> Path:
    spec = spec or PolicySpec(observation_size=OBS, action_size=ACT)
    save_artifact(
        path,
        spec,
        init_params(spec, seed),
        family="test_family",
        layout=layout(high),
        adaptation=ADAPTATION,
        training={"seed": seed, "note": "fresh initialization"},
    )
    return path


def rewrite_metadata(path: Path, edit: dict) -> None:
    """Edit metadata.json *and* recompute its digest, as a careful forger would."""
    file = path / "metadata.json"
    document = json.loads(file.read_text())
    document.pop("digest")
    document.update(edit)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    document["digest"] = hashlib.sha256(canonical.encode()).hexdigest()
    file.write_text(json.dumps(document))


def replace_content(path: Path, name: str, data: bytes) -> None:
    """Replace a content file and fix its size and hash in the metadata (and the digest)."""
    (path / name).write_bytes(data)
    files = json.loads((path / "metadata.json").read_text())["files"]
    files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    rewrite_metadata(path, {"files": files})


def test_round_trip_keeps_params_and_metadata(tmp_path: Path) -> None:
    spec = PolicySpec(observation_size=OBS, action_size=ACT, hidden_sizes=(16, 8))
    params = init_params(spec, 3)
    saved = save_artifact(
        tmp_path / "a", spec, params, family="f", layout=layout(), adaptation=ADAPTATION
    )
    loaded = load_artifact(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "metadata.json",
        "params.safetensors",
        "policy.onnx",
    ]
    assert loaded.digest == saved.digest and len(loaded.digest) == 64
    assert loaded.metadata.format_version == 1  # every parameter adapts: a version-1 artifact
    assert loaded.spec == spec and loaded.layout == layout()
    assert loaded.metadata.adaptation == ADAPTATION
    for name, value in params.items():
        assert torch.equal(loaded.params[name], value)
    assert not list(tmp_path.glob(".a.*")), "the staging directory must be gone"


@pytest.mark.parametrize(
    "hidden, activation", [((100, 100), "relu"), ((32,), "tanh"), ((20, 10, 5), "relu")]
)
def test_onnx_mean_matches_torch(
    tmp_path: Path, hidden: tuple[int, ...], activation: Literal["relu", "tanh"]
) -> None:
    spec = PolicySpec(
        observation_size=OBS, action_size=ACT, hidden_sizes=hidden, activation=activation
    )
    artifact = load_artifact(make(tmp_path / "a", seed=5, spec=spec))
    session = ort.InferenceSession(artifact.onnx_model, providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(0).normal(0, 3, size=(64, OBS)).astype(np.float32)
    mean, log_std = session.run(["mean", "log_std"], {"observation": obs})
    expected = mean_action(spec, artifact.params, torch.from_numpy(obs)).numpy()
    assert mean.shape == (64, ACT) and mean.dtype == np.float32
    assert np.abs(mean - expected).max() <= 1e-5
    np.testing.assert_array_equal(log_std, artifact.params["log_std"].numpy())


@pytest.mark.parametrize("name", ["metadata.json", "params.safetensors", "policy.onnx"])
def test_missing_file_is_refused(tmp_path: Path, name: str) -> None:
    path = make(tmp_path / "a")
    (path / name).unlink()
    with pytest.raises(ArtifactError, match=f"missing {name}"):
        load_artifact(path)


@pytest.mark.parametrize("name", ["params.safetensors", "policy.onnx"])
def test_truncated_file_is_refused(tmp_path: Path, name: str) -> None:
    path = make(tmp_path / "a")
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(path)


@pytest.mark.parametrize("name", ["params.safetensors", "policy.onnx"])
def test_flipped_byte_is_refused(tmp_path: Path, name: str) -> None:
    path = make(tmp_path / "a")
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name} does not match its SHA-256"):
        load_artifact(path)


def test_truncated_metadata_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    text = (path / "metadata.json").read_text()
    (path / "metadata.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(path)


def test_edited_metadata_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    document = json.loads((path / "metadata.json").read_text())
    document["layout"]["action_high"] = [5.0] * ACT  # looser actuator bounds, hash left alone
    (path / "metadata.json").write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match="edited after export"):
        load_artifact(path)


def test_newer_and_unknown_format_versions_are_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    rewrite_metadata(path, {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(ArtifactError, match="newer than this adaptctl reads"):
        load_artifact(path)
    rewrite_metadata(path, {"format_version": "one"})
    with pytest.raises(ArtifactError, match="unknown format_version"):
        load_artifact(path)
    rewrite_metadata(path, {"format": "something-else", "format_version": 1})
    with pytest.raises(ArtifactError, match="not adaptctl artifact metadata"):
        load_artifact(path)


def test_params_not_matching_the_spec_are_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    other = tmp_path / "other"
    make(other, spec=PolicySpec(observation_size=OBS, action_size=ACT, hidden_sizes=(8,)))
    replace_content(path, "params.safetensors", (other / "params.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="do not match the policy spec"):
        load_artifact(path)


def test_onnx_not_matching_the_params_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a", seed=0)
    make(tmp_path / "b", seed=1)  # same spec, other weights
    replace_content(path, "policy.onnx", (tmp_path / "b" / "policy.onnx").read_bytes())
    with pytest.raises(ArtifactError, match=r"initializer .* differs"):
        load_artifact(path)
    load_artifact(path, verify_onnx=False)  # the check is the only thing that catches it


def test_onnx_with_another_activation_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    artifact = load_artifact(path)
    tanh = PolicySpec(observation_size=OBS, action_size=ACT, activation="tanh")
    forged = policy_to_onnx(tanh, artifact.params).SerializeToString()
    replace_content(path, "policy.onnx", forged)
    with pytest.raises(ArtifactError, match="graph operators"):
        load_artifact(path)


def test_garbage_onnx_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "a")
    replace_content(path, "policy.onnx", b"\x08\x07garbage" * 10)
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        load_artifact(path)


def test_check_compatible(tmp_path: Path) -> None:
    base = load_artifact(make(tmp_path / "a"))
    wider = PolicySpec(observation_size=OBS, action_size=ACT, hidden_sizes=(64,))
    check_compatible(base, load_artifact(make(tmp_path / "b", spec=wider)))  # other net: fine
    other_bounds = load_artifact(make(tmp_path / "c", high=2.0))
    with pytest.raises(ArtifactError, match=r"incompatible.*action_high"):
        check_compatible(base, other_bounds)


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    spec = PolicySpec(observation_size=OBS, action_size=ACT)
    params = init_params(spec, 0)
    make(tmp_path / "a")
    with pytest.raises(ArtifactError, match="already exists"):
        make(tmp_path / "a")
    bad = {**params, "mean.bias": torch.full((ACT,), float("nan"))}
    kwargs = {"family": "f", "layout": layout(), "adaptation": ADAPTATION}
    with pytest.raises(ArtifactError, match="non-finite"):
        save_artifact(tmp_path / "n", spec, bad, **kwargs)  # type: ignore[arg-type]
    small = PolicySpec(observation_size=OBS + 1, action_size=ACT)
    with pytest.raises(ArtifactError, match="differ from the layout"):
        save_artifact(tmp_path / "s", small, init_params(small, 0), **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "n").exists() and not (tmp_path / "s").exists()


def test_a_restricted_step_is_a_version_2_artifact_and_its_names_are_checked(
    tmp_path: Path,
) -> None:
    spec = PolicySpec(observation_size=OBS, action_size=ACT, hidden_sizes=(16, 8))
    only = AdaptationSettings(adapted_parameters=("hidden.0.bias",))
    adaptation = ADAPTATION.model_copy(update={"settings": only})
    save_artifact(
        tmp_path / "a",
        spec,
        init_params(spec, 3),
        family="f",
        layout=layout(),
        adaptation=adaptation,
    )
    loaded = load_artifact(tmp_path / "a")
    assert loaded.metadata.format_version == 2 == FORMAT_VERSION
    assert loaded.metadata.adaptation.settings.adapted_parameters == ("hidden.0.bias",)
    # Version 1 has no such field: a reader of version 1 refuses the artifact instead of
    # adapting every parameter, and so does this one when the version says 1.
    rewrite_metadata(tmp_path / "a", {"format_version": 1})
    with pytest.raises(ArtifactError, match="came in version 2"):
        load_artifact(tmp_path / "a")
    bad = ADAPTATION.model_copy(
        update={"settings": AdaptationSettings(adapted_parameters=("hidden.5.bias",))}
    )
    with pytest.raises(ArtifactError, match=r"\['hidden.5.bias'\] are not parameters"):
        save_artifact(
            tmp_path / "b", spec, init_params(spec, 3), family="f", layout=layout(), adaptation=bad
        )
    document = json.loads((tmp_path / "a" / "metadata.json").read_text())
    settings = {**document["adaptation"]["settings"], "adapted_parameters": ["mean.gain"]}
    rewrite_metadata(
        tmp_path / "a",
        {"format_version": 2, "adaptation": {**document["adaptation"], "settings": settings}},
    )
    with pytest.raises(ArtifactError, match=r"\['mean.gain'\] are not parameters"):
        load_artifact(tmp_path / "a")
