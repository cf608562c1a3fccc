"""The runtime Controller against real onnxruntime and real MuJoCo (HalfCheetah velocity)."""

from __future__ import annotations

import json
import os
import pickle
import select
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from controller import Controller, ControllerConfig
from controller.adaptation import AdaptationSettings, adapt, task_batch
from controller.artifact import ArtifactAdaptation, IOLayout, load_artifact, save_artifact
from controller.config import ConfigError
from controller.journal import Journal, JournalError
from controller.policy import PolicySpec, init_params, kl_divergence, mean_action
from controller.serving import ServingPolicy, ServingSession
from sim.episodes import Episodes
from sim.families import Family, get_family
from sim.tasks import VelocityTask

K, HORIZON = 4, 40


@pytest.fixture(scope="module")
def family() -> Family:
    return get_family("cheetah_velocity")


def make_artifact(
    path: Path,
    family: Family,
    seed: int,
    high: float | None = None,
    hidden: tuple[int, ...] = (100, 100),
    settings: AdaptationSettings | None = None,
) -> Path:
    spec = PolicySpec(
        observation_size=family.observation_size,
        action_size=family.action_size,
        hidden_sizes=hidden,
    )
    bound = family.action_high if high is None else np.full(family.action_size, high)
    save_artifact(
        path,
        spec,
        init_params(spec, seed),
        family=family.name,
        layout=IOLayout(
            observation_size=family.observation_size,
            action_size=family.action_size,
            observation_names=family.observation_names,
            action_names=family.action_names,
            action_low=tuple(float(-b) for b in bound),
            action_high=tuple(float(b) for b in bound),
        ),
        adaptation=ArtifactAdaptation(
            episodes_per_step=K, horizon=HORIZON, settings=settings or AdaptationSettings()
        ),
    )
    return path


@pytest.fixture()
def artifact(tmp_path: Path, family: Family) -> Path:
    return make_artifact(tmp_path / "init", family, seed=11)


def collect(ctl: Controller, family: Family, velocity: float, seed: int) -> dict[str, np.ndarray]:
    """K episodes in lock-step through the Controller API, one stream per simulation."""
    sim = family.make_simulator(K, 1)
    obs = sim.reset([VelocityTask(velocity)] * K, np.random.default_rng(seed))
    seen: dict[str, list[np.ndarray]] = {"observations": [], "commands": [], "rewards": []}
    for _ in range(HORIZON):
        commands = ctl.act(obs)
        result = sim.step(commands)
        rewards = np.sum(list(result.reward_terms.values()), axis=0).astype(np.float32)
        for stream in range(K):
            ctl.record(obs[stream], commands[stream], rewards[stream], False, stream=stream)
        for name, value in zip(seen, (obs, commands, rewards), strict=True):
            seen[name].append(value)
        obs = result.observations
    for stream in range(K):
        ctl.end_episode(stream, truncated=True)
    return {k: np.stack(v, axis=1) for k, v in seen.items()}  # [K, H, ...]


def test_act_matches_torch_mean(artifact: Path) -> None:
    wide = ControllerConfig(journal=False, action_low=(-1e3,) * 6, action_high=(1e3,) * 6)
    ctl = Controller.load(artifact, wide)
    obs = np.random.default_rng(0).normal(0, 2, size=(32, 17)).astype(np.float32)
    expected = mean_action(ctl.spec, ctl.params, torch.from_numpy(obs)).numpy()
    single = np.stack([ctl.act(o, deterministic=True) for o in obs])
    batch = ctl.act(obs, deterministic=True)
    assert single.dtype == np.float32 and batch.shape == (32, 6)
    assert np.abs(single - expected).max() <= 1e-5
    assert np.abs(batch - expected).max() <= 1e-5


def test_actions_are_clipped_to_the_actuator_range(artifact: Path) -> None:
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=0))
    obs = np.random.default_rng(1).normal(0, 50, size=(500, 17)).astype(np.float32)
    commands = np.concatenate([ctl.act(obs), np.stack([ctl.act(o) for o in obs[:50]])])
    assert np.all(commands >= -1.0) and np.all(commands <= 1.0)
    assert np.any(commands == 1.0) and np.any(commands == -1.0)  # the clip did bind
    tight = Controller.load(
        artifact, ControllerConfig(journal=False, action_low=(-0.2,) * 6, action_high=(0.3,) * 6)
    )
    commands = tight.act(obs)
    assert commands.min() == pytest.approx(-0.2) and commands.max() == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="need 6 values"):
        Controller.load(artifact, ControllerConfig(journal=False, action_low=(-1.0,) * 5))


def test_non_finite_observations_get_the_safe_action(artifact: Path) -> None:
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=0))
    for bad in (np.nan, np.inf, -np.inf):
        obs = np.zeros(17, np.float32)
        obs[3] = bad
        np.testing.assert_array_equal(ctl.act(obs), np.zeros(6, np.float32))
    assert np.isfinite(ctl.act(np.full(17, 3e38, np.float32))).all()  # finite, overflowing
    batch = np.zeros((3, 17), np.float32)
    batch[1, 0] = np.nan
    commands = ctl.act(batch)
    np.testing.assert_array_equal(commands[1], np.zeros(6))
    assert np.all(commands[[0, 2]] != 0)
    assert ctl.status()["non_finite_observations"] == 5  # 3 singles, the overflow, 1 row

    hold = Controller.load(artifact, ControllerConfig(journal=False, safe_action="hold", seed=0))
    last = hold.act(np.ones(17, np.float32))
    np.testing.assert_array_equal(hold.act(np.full(17, np.nan, np.float32)), last)


def test_recording_keeps_the_sample_before_clipping(artifact: Path, family: Family) -> None:
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=3))
    seen = collect(ctl, family, 1.0, seed=0)
    episodes = ctl.episodes()
    assert [e.length for e in episodes] == [HORIZON] * K
    recorded = np.stack([e.actions for e in episodes])
    np.testing.assert_array_equal(np.clip(recorded, -1, 1), seen["commands"])
    assert np.abs(recorded).max() > 1.0  # std 1 at initialization: some samples lie outside
    np.testing.assert_array_equal(
        np.stack([e.observations for e in episodes]), seen["observations"]
    )
    np.testing.assert_array_equal(np.stack([e.rewards for e in episodes]), seen["rewards"])


def test_episodes_with_a_non_finite_value_are_dropped(artifact: Path) -> None:
    """Each kind of bad value (in the observation, the action or the reward) at any step
    drops its episode at the end; clean episodes on other streams are kept."""
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=3))
    observation = np.ones(17, np.float32)
    for stream, bad in enumerate(("observation", "action", "reward", None)):
        for step in range(5):
            command = ctl.act(observation, stream=stream)
            obs, reward = observation.copy(), 0.5
            if step == 3 and bad == "observation":
                obs[2] = np.inf
            if step == 3 and bad == "action":
                command = np.full_like(command, np.nan)
            if step == 3 and bad == "reward":
                reward = float("nan")
            ctl.record(obs, command, reward, done=step == 4, stream=stream)
    assert [e.stream for e in ctl.episodes()] == [3]
    assert ctl.status()["episodes_discarded"] == 3


def test_adaptation_equals_the_meta_training_step(artifact: Path, family: Family) -> None:
    # 4 short episodes make a noisy gradient (KL ~10): this test is about equality, not the bound.
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=4, max_kl=1e6))
    init = {k: v.clone() for k, v in ctl.params.items()}
    collect(ctl, family, 1.5, seed=1)
    episodes = ctl.episodes()
    report = ctl.adapt()
    assert report.accepted, report.reason
    assert report.step == 0 and report.step_size == 0.1
    assert report.timings is not None and report.timings.to_serving_s > 0
    # Meta-training's inner loop on the same episodes, as the sampler would hand them over.
    stacked = {
        "observations": np.stack([e.observations for e in episodes])[None],
        "actions": np.stack([e.actions for e in episodes])[None],
        "rewards": np.stack([e.rewards for e in episodes])[None],
    }
    shape = stacked["rewards"].shape
    reference = Episodes(
        **stacked,
        reward_terms={"total": stacked["rewards"]},
        valid=np.ones(shape, bool),
        terminated=np.zeros(shape, bool),
        infos={},
        tasks=[VelocityTask(1.5)],
    )
    settings = load_artifact(artifact).metadata.adaptation.settings
    expected = adapt(ctl.spec, init, task_batch(reference, 0, settings), 0.1)
    for name, value in expected.items():
        torch.testing.assert_close(ctl.params[name], value, rtol=0, atol=1e-6)
    obs = torch.from_numpy(stacked["observations"].reshape(-1, 17))
    kl = float(kl_divergence(ctl.spec, init, expected, obs).mean())
    assert report.kl == pytest.approx(kl, rel=1e-4)
    assert report.episode_returns == pytest.approx(reference.returns()[0].tolist())
    # The served ONNX session is the adapted policy.
    np.testing.assert_allclose(
        ctl.act(stacked["observations"][0, 0, 0], deterministic=True),
        np.clip(mean_action(ctl.spec, expected, obs[0]).numpy(), -1, 1),
        atol=1e-5,
    )


def test_an_artifact_that_adapts_some_parameters_adapts_only_those(
    tmp_path: Path, family: Family
) -> None:
    only = AdaptationSettings(adapted_parameters=("hidden.0.bias", "mean.bias"))
    path = make_artifact(tmp_path / "partial", family, seed=11, settings=only)
    ctl = Controller.load(path, ControllerConfig(journal=False, seed=4, max_kl=1e6))
    init = {k: v.clone() for k, v in ctl.params.items()}
    collect(ctl, family, 1.5, seed=1)
    report = ctl.adapt()
    assert report.accepted, report.reason
    moved = [name for name in init if not torch.equal(ctl.params[name], init[name])]
    assert sorted(moved) == ["hidden.0.bias", "mean.bias"]


def test_each_step_needs_fresh_on_policy_episodes(artifact: Path, family: Family) -> None:
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=5, steps=2, max_kl=1e6))
    first = ctl.adapt()
    assert not first.accepted and f"need {K} finished episodes" in first.reason
    collect(ctl, family, 0.5, seed=2)
    assert ctl.adapt().accepted
    assert ctl.status()["episodes_ready"] == 0  # consumed; stale ones are not reused
    again = ctl.adapt()
    assert not again.accepted and "have 0" in again.reason
    collect(ctl, family, 0.5, seed=3)
    second = ctl.adapt()
    assert second.accepted and second.step == 1 and second.step_size == 0.05
    collect(ctl, family, 0.5, seed=4)
    assert "limit" in ctl.adapt().reason
    ctl.reset()
    assert ctl.status()["adaptation_steps"] == 0
    for name, value in load_artifact(artifact).params.items():
        assert torch.equal(ctl.params[name], value)


def test_adaptation_beyond_the_kl_bound_is_rejected(artifact: Path, family: Family) -> None:
    ctl = Controller.load(artifact, ControllerConfig(journal=False, seed=6, max_kl=1e-9))
    before = ctl.status()["policy_id"]
    obs = np.ones(17, np.float32)
    command = ctl.act(obs, deterministic=True)
    collect(ctl, family, 1.0, seed=5)
    report = ctl.adapt()
    assert not report.accepted and "exceeds max_kl" in report.reason
    assert report.kl is not None and report.kl > 1e-9
    assert ctl.status()["policy_id"] == before
    np.testing.assert_array_equal(ctl.act(obs, deterministic=True), command)
    assert ctl.status()["adaptations_rejected"] == 1


def test_swap_during_concurrent_acting_drops_no_call(tmp_path: Path, family: Family) -> None:
    paths = [make_artifact(tmp_path / f"a{i}", family, seed=20 + i) for i in range(2)]
    ctl = Controller.load(paths[0], ControllerConfig(journal=False))
    obs = np.random.default_rng(2).normal(size=17).astype(np.float32)
    means = [
        np.clip(mean_action(a.spec, a.params, torch.from_numpy(obs)).numpy(), -1, 1)
        for a in map(load_artifact, paths)
    ]
    outputs: list[np.ndarray] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                outputs.append(ctl.act(obs, deterministic=True))
            except BaseException as error:  # any failure of a call is what this test counts
                errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    reports = [ctl.swap(paths[(i + 1) % 2]) for i in range(100)]
    stop.set()
    thread.join()
    assert not errors and all(r.accepted for r in reports)
    served = np.stack(outputs)
    matches = [np.abs(served - m).max(axis=1) <= 1e-5 for m in means]
    assert np.all(matches[0] | matches[1]), "every call is served whole by one of the two"
    assert matches[0].any() and matches[1].any()


def test_policies_of_one_architecture_share_one_session(
    tmp_path: Path, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[ort.InferenceSession] = []
    real = ort.InferenceSession

    def counting(*args: object, **kwargs: object) -> ort.InferenceSession:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ort, "InferenceSession", counting)
    same = make_artifact(tmp_path / "same", family, seed=31)
    other = make_artifact(tmp_path / "other", family, seed=32, hidden=(64,))
    wide = ControllerConfig(
        journal=False, seed=0, max_kl=1e6, action_low=(-1e3,) * 6, action_high=(1e3,) * 6
    )
    ctl = Controller.load(make_artifact(tmp_path / "first", family, seed=30), wide)
    obs = np.random.default_rng(3).normal(0, 2, size=(16, 17)).astype(np.float32)

    def serves_torchs_mean() -> None:
        expected = mean_action(ctl.spec, ctl.params, torch.from_numpy(obs)).numpy()
        single = np.stack([ctl.act(o, deterministic=True) for o in obs])
        assert np.abs(single - expected).max() <= 1e-5
        assert np.abs(ctl.act(obs, deterministic=True) - expected).max() <= 1e-5

    collect(ctl, family, 1.0, seed=7)
    assert ctl.adapt().accepted
    serves_torchs_mean()
    assert ctl.swap(same).accepted
    serves_torchs_mean()
    assert len(built) == 1, "an adaptation or a same-architecture swap builds no session"
    assert ctl.swap(other).accepted  # another architecture: its own session
    serves_torchs_mean()
    assert ctl.swap(same).accepted
    serves_torchs_mean()
    assert len(built) == 2, "each architecture's session is built once"


def test_two_policies_on_one_session_keep_their_own_parameters(family: Family) -> None:
    spec = PolicySpec(observation_size=family.observation_size, action_size=family.action_size)
    shared = ServingSession(spec, threads=1)
    params = [init_params(spec, seed) for seed in (1, 2)]
    policies = [ServingPolicy(shared, p, 0) for p in params]
    assert policies[0].session is policies[1].session
    obs = np.random.default_rng(4).normal(0, 2, size=(8, 17)).astype(np.float32)
    for policy, p in zip(policies, params, strict=True):
        expected = mean_action(spec, p, torch.from_numpy(obs)).numpy()
        assert np.abs(policy.batch_mean(obs) - expected).max() <= 1e-5
        policy.input[0] = obs[0]
        policy.session.run_with_iobinding(policy.binding)
        assert np.abs(policy.output[0] - expected[0]).max() <= 1e-5
        assert policy.output.dtype == policy.batch_mean(obs).dtype == np.float32


def test_an_artifact_pickles_with_its_parameters_exact(artifact: Path) -> None:
    """The verifier child sends artifacts pickled (as numpy parameters, cheap to unpickle)."""
    loaded = load_artifact(artifact)
    again = pickle.loads(pickle.dumps(loaded))
    assert again.digest == loaded.digest and again.onnx_model == loaded.onnx_model
    assert again.metadata == loaded.metadata and again.path == loaded.path
    assert list(again.params) == list(loaded.params)
    for name, value in loaded.params.items():
        assert again.params[name].dtype == torch.float32 and not again.params[name].requires_grad
        assert torch.equal(again.params[name], value)


def test_a_swap_begun_and_finished_by_the_acting_thread(tmp_path: Path, family: Family) -> None:
    """begin_swap returns before the verifier answers; the loop keeps acting with the old
    policy until it finishes the swap itself; a second swap begun meanwhile is refused."""
    paths = [make_artifact(tmp_path / f"a{i}", family, seed=30 + i) for i in range(2)]
    ctl = Controller.load(paths[0], ControllerConfig(journal=False))
    obs = np.full(17, 0.3, np.float32)
    old, new = (
        np.clip(mean_action(a.spec, a.params, torch.from_numpy(obs)).numpy(), -1, 1)
        for a in map(load_artifact, paths)
    )
    pending = ctl.begin_swap(paths[1])
    refused = ctl.finish_swap(ctl.begin_swap(paths[1]))
    assert not refused.accepted and "being verified" in refused.reason
    acted = 0
    while not pending.ready():  # the verifier loads and checks it meanwhile
        np.testing.assert_allclose(ctl.act(obs, deterministic=True), old, atol=1e-5)
        acted += 1
        select.select([pending.fileno()], [], [], 0.001)
    assert acted > 0, "begin_swap waited for the verifier"
    report = ctl.finish_swap(pending)
    assert report.accepted and report.digest == load_artifact(paths[1]).digest
    np.testing.assert_allclose(ctl.act(obs, deterministic=True), new, atol=1e-5)
    bad = tmp_path / "bad"
    bad.mkdir()
    assert not ctl.finish_swap(ctl.begin_swap(bad)).accepted
    back = ctl.begin_swap(paths[0])  # installed before: the child answers with the digest only
    assert ctl.finish_swap(back).accepted
    np.testing.assert_allclose(ctl.act(obs, deterministic=True), old, atol=1e-5)
    ctl.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "metadata", "missing", "incompatible"])
def test_bad_swaps_are_refused_and_the_old_policy_serves(
    tmp_path: Path, family: Family, damage: str
) -> None:
    current = make_artifact(tmp_path / "current", family, seed=1)
    candidate = make_artifact(tmp_path / "candidate", family, seed=2, high=None)
    if damage == "flip":
        flipped = bytearray((candidate / "policy.onnx").read_bytes())
        flipped[-100] ^= 0x10
        (candidate / "policy.onnx").write_bytes(bytes(flipped))
    elif damage == "truncate":
        data = (candidate / "params.safetensors").read_bytes()
        (candidate / "params.safetensors").write_bytes(data[:-8])
    elif damage == "metadata":
        document = json.loads((candidate / "metadata.json").read_text())
        document["adaptation"]["settings"]["step_size"] = 10.0
        (candidate / "metadata.json").write_text(json.dumps(document))
    elif damage == "missing":
        (candidate / "params.safetensors").unlink()
    else:
        candidate = make_artifact(tmp_path / "wide", family, seed=2, high=2.0)
    ctl = Controller.load(current, ControllerConfig(journal=False))
    obs = np.full(17, 0.5, np.float32)
    before = ctl.act(obs, deterministic=True)
    report = ctl.swap(candidate)
    assert not report.accepted and report.digest == report.previous_digest
    assert {
        "flip": "SHA-256",
        "truncate": "truncated",
        "metadata": "edited",
        "missing": "missing",
        "incompatible": "incompatible",
    }[damage] in report.reason
    np.testing.assert_array_equal(ctl.act(obs, deterministic=True), before)
    assert ctl.status()["artifact_digest"] == report.previous_digest


_CRASHING_ROBOT = """
import os, signal, sys
import numpy as np
from controller import Controller, ControllerConfig
ctl = Controller.load(sys.argv[1], ControllerConfig(journal_dir=sys.argv[2], seed=0))
rng = np.random.default_rng(0)
for episode in range(int(sys.argv[3]) + 1):
    for step in range(7 + episode):
        obs = rng.normal(size=17).astype(np.float32)
        ctl.record(obs, ctl.act(obs), float(rng.normal()), False)
    if episode < int(sys.argv[3]):
        ctl.end_episode()
np.savez(sys.argv[4], *[np.concatenate([e.observations.ravel(), e.actions.ravel(), e.rewards])
                        for e in ctl.episodes()])
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), the last episode is in progress
"""


def test_a_crash_loses_no_finished_episode(artifact: Path, tmp_path: Path) -> None:
    journal, expected = tmp_path / "journal", tmp_path / "expected.npz"
    args = [str(artifact), str(journal), "3", str(expected)]
    result = subprocess.run([sys.executable, "-c", _CRASHING_ROBOT, *args], check=False)
    assert result.returncode == -9
    ctl = Controller.load(artifact, ControllerConfig(journal_dir=journal))
    recovered = ctl.episodes()
    with np.load(expected) as saved:
        assert len(recovered) == len(saved.files) == 3
        for episode, key in zip(recovered, saved.files, strict=True):
            flat = np.concatenate(
                [episode.observations.ravel(), episode.actions.ravel(), episode.rewards]
            )
            np.testing.assert_array_equal(flat, saved[key])
    assert ctl.status()["episodes_ready"] == 3


def test_journal_resumes_the_adapted_policy(artifact: Path, tmp_path: Path, family: Family) -> None:
    config = ControllerConfig(journal_dir=tmp_path / "journal", seed=8, max_kl=1e6)
    with Controller.load(artifact, config) as ctl:
        collect(ctl, family, 1.0, seed=6)
        assert ctl.adapt().accepted
        collect(ctl, family, 1.0, seed=7)
        adapted, status = ctl.params, ctl.status()
        with pytest.raises(JournalError, match="in use by another controller"):
            Controller.load(artifact, config)
    with open(tmp_path / "journal" / "journal.bin", "ab") as handle:
        handle.write(b"ACJ1\x00\x10")  # a torn frame, as a crash mid-write leaves
    resumed = Controller.load(artifact, config)
    assert resumed.status()["policy_id"] == status["policy_id"]
    assert resumed.status()["adaptation_steps"] == 1 and resumed.status()["episodes_ready"] == K
    assert resumed.status()["journal_torn_bytes"] == 6
    for name, value in adapted.items():
        assert torch.equal(resumed.params[name], value)
    assert resumed.adapt().step_size == 0.05
    resumed.close()
    fresh = Controller.load(artifact, config.model_copy(update={"resume": False}))
    assert fresh.status()["adaptation_steps"] == 0 and fresh.status()["episodes_ready"] == 0
    fresh.close()


def test_a_restored_journal_forgets_the_episodes_the_controller_forgot(
    artifact: Path, tmp_path: Path, family: Family
) -> None:
    """An episode left over by an adaptation is stale once the policy changes; swapped away
    and back to its initialization, the running controller has none ready, and neither has
    the one restored from its journal."""
    other = make_artifact(tmp_path / "other", family, seed=12)
    config = ControllerConfig(journal_dir=tmp_path / "journal", seed=8, max_kl=1e6)
    with Controller.load(artifact, config) as ctl:
        collect(ctl, family, 1.0, seed=6)
        obs = np.full(17, 0.1, np.float32)
        for step in range(5):  # one more: not in the batch
            ctl.record(obs, ctl.act(obs), 1.0, step == 4)
        assert ctl.status()["episodes_ready"] == K + 1
        assert ctl.adapt().accepted
        assert ctl.swap(other).accepted and ctl.swap(artifact).accepted
        live = ctl.status()
    assert live["episodes_ready"] == 0 and live["adaptation_steps"] == 0
    with Controller.load(artifact, config) as restored:
        assert restored.status()["episodes_ready"] == 0
        assert restored.status()["policy_id"] == live["policy_id"]
        assert restored.swap(other).accepted  # the journal now ends with another initialization
    with Controller.load(artifact, config) as restored:
        assert "ends with another initialization swapped in" in restored.restored


def test_a_swap_waits_for_no_disk_and_the_next_record_makes_it_durable(
    artifact: Path, tmp_path: Path, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing a swap (in the acting thread) does not fsync the journal; the next episode's
    fsync covers the swap record too, so a restart replays it."""
    other = make_artifact(tmp_path / "other", family, seed=13)
    syncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    with Controller.load(artifact, ControllerConfig(journal_dir=tmp_path / "j")) as ctl:
        ctl.swap(artifact)  # start the verifier; the same artifact: a swap to itself
        syncs.clear()
        assert ctl.swap(other).accepted
        assert syncs == []
        obs = np.zeros(17, np.float32)
        for step in range(3):
            ctl.record(obs, ctl.act(obs), 1.0, step == 2)
        assert len(syncs) == 1
        swapped = ctl.policy_id
    records = Journal(tmp_path / "j").records
    assert [r["kind"] for r in records][-2:] == ["swap", "episode"]
    assert records[-2]["policy"] == swapped


def test_config_from_yaml(tmp_path: Path, artifact: Path) -> None:
    file = tmp_path / "controller.yaml"
    file.write_text("safe_action: hold\nmax_kl: 0.5\nepisodes_per_step: 2\n")
    config = ControllerConfig.from_yaml(file, max_kl=0.25, seed=None)
    assert config.safe_action == "hold" and config.max_kl == 0.25
    assert Controller.load(artifact, config).episodes_per_step == 2
    assert (
        Controller.load(artifact, ControllerConfig(journal=False)).episodes_per_step == K
    )  # the artifact's default
    file.write_text("safe_actoin: hold\n")
    with pytest.raises(ConfigError, match="safe_actoin"):
        ControllerConfig.from_yaml(file)


def test_journal_history_and_corruption(artifact: Path, tmp_path: Path) -> None:
    config = ControllerConfig(journal_dir=tmp_path / "journal", seed=9)
    with Controller.load(artifact, config) as ctl:
        for _ in range(2):
            for step in range(5):
                obs = np.full(17, step, np.float32)
                ctl.record(obs, ctl.act(obs), 1.0, step == 4)
    with Controller.load(artifact, config.model_copy(update={"resume": False})) as ctl:
        assert ctl.status()["episodes_ready"] == 0  # history only
    with Controller.load(artifact, config) as ctl:
        assert ctl.status()["episodes_ready"] == 2
    file = tmp_path / "journal" / "journal.bin"
    data = bytearray(file.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the first episode, intact records after it
    file.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="corrupt at byte"):
        Controller.load(artifact, config)
