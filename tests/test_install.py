"""Installs by need: the wheel installed with each extra in a fresh virtual environment.

Each install gets only its layer's packages and runs its entry points: the robot-side client on
the base install; the controller runtime without MuJoCo, gymnasium or matplotlib; the task
families without torch (``gymnasium.make("adaptctl/...")`` in a fresh interpreter, with no adaptctl
import first); the video encoder without torch or MuJoCo; meta-training and the sim loop
(``train``); the demo's install (``train,video``: ``adaptctl run --video``); TensorBoard scalars;
the Ray backend; and the test and lint tools (``dev``).

The installs that include the runtime grow one environment layer by layer (base, runtime,
train, train + video, + tensorboard, + ray, dev), so that torch is installed once: each extra's
install is a superset of the one before, and after each layer the environment must hold exactly
the distributions that extra requires (the closure of its requirements, read from the installed
metadata), nothing left over from an earlier layer. The sim and video installs, which lack
torch, get their own environments.

pip installs from its configured indexes and cache. Where torch==2.13.0 would be downloaded rather
than taken from a local file (PyPI's default wheel is the multi-GB CUDA build), the installs that
need torch are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sim import gym_ids
from sim.families import get_family
from sim.gym_envs import ENV_IDS

# An install on a loaded 2-core machine can outlast the suite's 600 s per test.
pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "pyproject.toml",
    "setup.py",
    "README.md",
    "adaptctl_gymnasium.py",
    "adaptctl_gymnasium.pth",
    "sim",
    "controller",
    "meta_train",
]
ARTIFACT = ROOT / "artifacts" / "cheetah_velocity"
BOOTSTRAP = {"pip", "setuptools", "wheel"}
"""What ``python -m venv`` may put in an environment before any install."""
TINY_TRAINING = [
    "--set",
    "iterations=1",
    "--set",
    "meta_batch_size=2",
    "--set",
    "episodes_per_step=2",
    "--set",
    "horizon=20",
    "--set",
    "torch_threads=1",
    "--set",
    "sampler.num_threads=1",
    "--quiet",
]
"""A training run of seconds (docs/own-robot.md's pipeline check)."""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload, no-any-return]


def python_code(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in the environment's interpreter, away from the repository (no sys.path help)."""
    return run([str(venv / "bin" / "python"), "-c", textwrap.dedent(code)], cwd=venv)


def adaptctl(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The environment's ``adaptctl`` entry point, run away from the repository."""
    return run([str(venv / "bin" / "adaptctl"), *args], cwd=venv)


def test_every_gymnasium_id_has_its_familys_horizon() -> None:
    assert set(gym_ids.ENV_IDS) == set(ENV_IDS)
    for family, horizon in gym_ids.ENV_IDS.values():
        assert get_family(family).horizon == horizon, family


def test_importing_gymnasium_registers_the_ids_without_importing_adaptctl() -> None:
    code = """
        import sys
        import adaptctl_gymnasium
        adaptctl_gymnasium.install()
        import gymnasium
        assert "adaptctl/HalfCheetahVel-v0" in gymnasium.registry
        assert not any(m == "sim" or m.startswith(("sim.", "controller", "mujoco")) for m in sys.modules)
        env = gymnasium.make("adaptctl/HalfCheetahVel-v0", task=1.0, render_mode="rgb_array")
        env.reset(seed=0)
        assert env.render().shape == (240, 320, 3)
        assert "torch" not in sys.modules
    """
    done = run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources (no build files in the checkout).

    Built with this interpreter's setuptools where it has one (no download); otherwise pip
    builds it in an isolated environment, fetching setuptools from its indexes.
    """
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "--quiet",
            "-w",
            str(dist),
            str(source),
        ]
    )
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("adaptctl-*.whl")
    return built


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3*/site-packages")
    return found


def required_closure(venv: Path, extras: set[str]) -> set[str]:
    """The distributions that ``adaptctl[extras]`` requires in ``venv``, transitively.

    Read from the installed metadata, markers evaluated for this interpreter and each extra
    asked for (a package's own extras, such as ``gymnasium[mujoco]``, included).
    """
    dists = {
        canonicalize_name(d.metadata["Name"]): d
        for d in metadata.distributions(path=[str(site_packages(venv))])
    }
    seen: set[tuple[str, str]] = set()
    todo = [("adaptctl", "")] + [("adaptctl", extra) for extra in extras]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in dists:
            continue
        seen.add((name, extra))
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                child = canonicalize_name(requirement.name)
                todo += [(child, "")] + [(child, e) for e in requirement.extras]
    return {name for name, _ in seen}


def installed_distributions(venv: Path) -> set[str]:
    return {
        canonicalize_name(d.metadata["Name"])
        for d in metadata.distributions(path=[str(site_packages(venv))])
    }


def assert_exactly(venv: Path, extras: set[str]) -> None:
    """``venv`` holds what ``adaptctl[extras]`` requires, and nothing else but pip's own."""
    required, present = required_closure(venv, extras), installed_distributions(venv)
    assert required <= present, f"missing: {sorted(required - present)}"
    extra = present - required - BOOTSTRAP
    assert not extra, (
        f"installed, but not required by adaptctl[{','.join(sorted(extras))}]: {sorted(extra)}"
    )


def fresh_env(path: Path, wheel: Path, extras: set[str]) -> Path:
    """A new virtual environment at ``path`` with ``wheel[extras]`` installed."""
    assert run([sys.executable, "-m", "venv", str(path)]).returncode == 0
    install(path, wheel, extras)
    return path


def install(venv: Path, wheel: Path, extras: set[str]) -> None:
    requirement = f"{wheel}[{','.join(sorted(extras))}]" if extras else str(wheel)
    done = run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly(venv, extras)


def expanded(extras: set[str]) -> set[str]:
    """``extras`` with the extras they name in turn (``dev`` names ``train``, ``train`` names
    ``runtime`` and ``sim``), from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        table = tomllib.load(file)["project"]["optional-dependencies"]
    out: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra not in out:
            out.add(extra)
            for line in table[extra]:
                requirement = Requirement(line)
                if canonicalize_name(requirement.name) == "adaptctl":
                    todo += requirement.extras
    return out


class Layers:
    """One virtual environment that gains extras install by install (torch installed once).

    ``at(extras)`` installs ``wheel[extras]`` on top of what is there when that is a superset of
    the extras installed so far, else starts a new environment; either way the environment
    then holds exactly what the extras require (``assert_exactly``).
    """

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root, self.wheel = root, wheel
        self.venv: Path | None = None
        self.extras: set[str] = set()
        self._count = 0

    def at(self, extras: set[str]) -> Path:
        if self.venv is None or not expanded(self.extras) <= expanded(extras):
            self._count += 1
            self.venv = fresh_env(self.root / f"venv{self._count}", self.wheel, extras)
        elif extras != self.extras:
            install(self.venv, self.wheel, extras)
        self.extras = set(extras)
        return self.venv


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Layers:
    return Layers(tmp_path_factory.mktemp("layers"), wheel)


def installed(venv: Path, modules: list[str]) -> dict[str, bool]:
    done = python_code(
        venv,
        f"""
        import importlib.util, json
        print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {modules!r}}}))
    """,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


HEAVY = ["torch", "onnxruntime", "mujoco", "gymnasium", "matplotlib", "ray", "pydantic"]
OPTIONAL = ["imageio_ffmpeg", "tensorboard", "ray", "pytest", "mypy", "ruff"]
"""What only the video, tensorboard, ray and dev extras bring (imageio alone comes with
gymnasium[mujoco], in the sim extra)."""


def torch_is_local() -> bool:
    """pip would take torch==2.13.0 from a local file (not download a multi-GB build)."""
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--quiet",
            "--report",
            "-",
            "torch==2.13.0",
        ]
    )
    if done.returncode != 0:
        return False
    items = json.loads(done.stdout)["install"]
    return bool(items) and items[0]["download_info"]["url"].startswith("file:")


@pytest.fixture(scope="module")
def torch_local() -> None:
    if not torch_is_local():
        pytest.skip("torch==2.13.0 is not in a local wheel here; pip would download its CUDA build")


@pytest.mark.slow
def test_base_install_is_the_robot_side_client(layers: Layers) -> None:
    venv = layers.at(set())
    assert not any(installed(venv, [*HEAVY, *OPTIONAL, "imageio"]).values())
    done = python_code(
        venv,
        """
        from controller.link.client import RobotClient
        import zmq, msgpack, numpy
        print("ok")
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    assert adaptctl(venv, "--help").returncode == 0
    done = adaptctl(venv, "serve", "some/artifact")
    assert done.returncode == 2
    assert "pip install 'adaptctl[runtime]'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_runtime_install_serves_without_mujoco_gymnasium_or_matplotlib(
    layers: Layers, torch_local: None
) -> None:
    venv = layers.at({"runtime"})
    have = installed(venv, [*HEAVY, *OPTIONAL, "imageio"])
    assert have["torch"] and have["onnxruntime"] and have["pydantic"]
    assert not any(have[m] for m in ["mujoco", "gymnasium", "matplotlib", "imageio", *OPTIONAL])
    done = python_code(
        venv,
        f"""
        import numpy as np
        from controller import Controller
        with Controller.load({str(ARTIFACT)!r}) as controller:
            action = controller.act(np.zeros(17, dtype=np.float32))
        assert action.shape == (6,)
        print("ok")
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    assert adaptctl(venv, "serve", "--help").returncode == 0
    done = adaptctl(venv, "run", str(ARTIFACT), "--target-velocity", "1.0")
    assert done.returncode == 2 and "pip install 'adaptctl[train,video]'" in done.stderr


@pytest.mark.slow
def test_train_install_trains_and_runs_the_sim_loop_without_video_tensorboard_or_ray(
    layers: Layers, torch_local: None, tmp_path: Path
) -> None:
    venv = layers.at({"train"})
    have = installed(venv, HEAVY + OPTIONAL + ["tqdm"])
    assert all(have[m] for m in ["torch", "mujoco", "gymnasium", "matplotlib", "tqdm"])
    assert not any(have[m] for m in OPTIONAL)
    assert adaptctl(venv, "--help").returncode == 0
    out = tmp_path / "hopper"
    done = adaptctl(
        venv,
        "train",
        str(ROOT / "configs" / "hopper_velocity.yaml"),
        "--out",
        str(out),
        *TINY_TRAINING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "artifact" / "metadata.json").is_file() and (out / "log.jsonl").is_file()
    done = adaptctl(venv, "curves", str(out), "--out", str(tmp_path / "curves.png"))
    assert done.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 0, done.stderr
    done = adaptctl(
        venv,
        "run",
        str(out / "artifact"),
        "--target-velocity",
        "1.0",
        "--out",
        str(tmp_path / "run"),
        "--threads",
        "1",
        "--video",
    )
    assert done.returncode == 2 and "pip install 'adaptctl[video]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def mp4_frames_and_seconds(venv: Path, path: Path) -> tuple[int, float]:
    """Frames and seconds of an MP4, as ffmpeg (imageio-ffmpeg's binary) decodes it."""
    done = python_code(
        venv,
        f"""
        import imageio_ffmpeg
        print(*imageio_ffmpeg.count_frames_and_secs({str(path)!r}))
    """,
    )
    assert done.returncode == 0, done.stderr
    frames, seconds = done.stdout.split()
    return int(frames), float(seconds)


@pytest.mark.slow
def test_train_and_video_install_runs_the_demo_with_its_video(
    layers: Layers, torch_local: None, tmp_path: Path
) -> None:
    """``make demo``'s install: ``adaptctl run --video`` writes the before/after MP4."""
    venv = layers.at({"train", "video"})
    have = installed(venv, [*OPTIONAL, "imageio"])
    assert have["imageio"] and have["imageio_ffmpeg"]
    assert not any(have[m] for m in ["tensorboard", "ray", "pytest", "mypy", "ruff"])
    out = tmp_path / "demo"
    done = adaptctl(
        venv,
        "run",
        str(ARTIFACT),
        "--target-velocity",
        "1.37",
        "--out",
        str(out),
        "--threads",
        "1",
        "--video",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"video (before | after adaptation, side by side): {out / 'adaptation.mp4'}" in done.stdout
    )
    frames, seconds = mp4_frames_and_seconds(venv, out / "adaptation.mp4")
    assert frames == 201 and seconds >= 5.0  # the cheetah's episodes never terminate early


@pytest.mark.slow
def test_tensorboard_install_writes_the_training_scalars(
    layers: Layers, torch_local: None, tmp_path: Path
) -> None:
    venv = layers.at({"train", "video", "tensorboard"})
    assert not any(installed(venv, ["ray", "pytest", "mypy", "ruff"]).values())
    board = tmp_path / "tb"
    done = adaptctl(
        venv,
        "train",
        str(ROOT / "configs" / "hopper_velocity.yaml"),
        "--out",
        str(tmp_path / "run"),
        "--tensorboard",
        str(board),
        *TINY_TRAINING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(board.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_ray_install_has_the_ray_backend(layers: Layers, torch_local: None) -> None:
    """Ray imports and the backend module finds it; starting a cluster is left to
    tests/test_ray_sampler.py, which runs the backend in the dev environment."""
    venv = layers.at({"train", "video", "tensorboard", "ray"})
    assert not any(installed(venv, ["pytest", "mypy", "ruff"]).values())
    done = python_code(
        venv,
        """
        import ray
        from meta_train import ray_sampler
        print("ok", ray.__version__)
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


@pytest.mark.slow
def test_dev_install_has_every_layer_and_the_tools(
    layers: Layers, torch_local: None, tmp_path: Path
) -> None:
    venv = layers.at({"dev"})
    assert all(installed(venv, HEAVY + OPTIONAL + ["hypothesis", "pytest_timeout"]).values())
    for tool in ("pytest", "ruff", "mypy"):
        done = run([str(venv / "bin" / tool), "--version"], cwd=venv)
        assert done.returncode == 0, f"{tool}: {done.stderr}"
    (tmp_path / "bad.py").write_text("import os\n")
    done = run(
        [str(venv / "bin" / "ruff"), "check", "--no-cache", "--isolated", "bad.py"], cwd=tmp_path
    )
    assert done.returncode == 1 and "F401" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_sim_install_makes_the_gymnasium_ids_in_a_fresh_interpreter(
    tmp_path: Path, wheel: Path
) -> None:
    venv = fresh_env(tmp_path / "venv", wheel, {"sim"})
    have = installed(venv, HEAVY + OPTIONAL)
    assert have["mujoco"] and have["gymnasium"]
    assert not (have["torch"] or have["matplotlib"] or any(have[m] for m in OPTIONAL))
    done = python_code(
        venv,
        """
        import sys
        import gymnasium
        env = gymnasium.make("adaptctl/HalfCheetahVel-v0", task=1.0, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (240, 320, 3) and frame.std() > 5
        assert "torch" not in sys.modules
        print("ok")
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


@pytest.mark.slow
def test_video_install_encodes_captioned_films_without_torch_or_mujoco(
    tmp_path: Path, wheel: Path
) -> None:
    venv = fresh_env(tmp_path / "venv", wheel, {"video"})
    have = installed(venv, [*HEAVY, *OPTIONAL, "imageio", "PIL"])
    assert have["imageio"] and have["imageio_ffmpeg"] and have["PIL"]
    assert not any(have[m] for m in [*HEAVY, "tensorboard", "pytest"])
    path = tmp_path / "films.mp4"
    done = python_code(
        venv,
        f"""
        import sys
        import numpy as np
        from controller.video import Film, write_side_by_side
        films = [Film("before"), Film("after")]
        for step in range(12):
            for film in films:
                film.add(np.full((60, 80, 3), 20 * step, dtype=np.uint8), f"step {{step}}")
        write_side_by_side({str(path)!r}, films, "two films", fps=6.0)
        assert not any(m in sys.modules for m in ("torch", "mujoco", "sim"))
        print("ok")
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    frames, seconds = mp4_frames_and_seconds(venv, path)
    assert frames == 12 and seconds == pytest.approx(2.0, abs=0.1)
