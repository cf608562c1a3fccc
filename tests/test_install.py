"""Installs by need: the wheel installed with each extra in a fresh virtual environment.

Each environment gets only its layer's packages and runs its entry points: the robot-side client
on the base install, the controller runtime without MuJoCo, gymnasium or matplotlib, and the
task families without torch (``gymnasium.make("adaptctl/...")`` in a fresh interpreter, with no
adaptctl import first). pip installs from its configured indexes; where torch==2.13.0 would be
downloaded rather than taken from a local file (the CUDA build, several GB), the runtime install
is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sim import gym_ids
from sim.families import get_family
from sim.gym_envs import ENV_IDS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "adaptctl_gymnasium.py",
           "adaptctl_gymnasium.pth", "sim", "controller", "meta_train"]  # fmt: skip


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload, no-any-return]


def python_code(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in the environment's interpreter, away from the repository (no sys.path help)."""
    return run([str(venv / "bin" / "python"), "-c", textwrap.dedent(code)], cwd=venv)


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
    """The project's wheel, built from a copy of its sources (no build files in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--quiet", "-w", str(dist), str(source)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("adaptctl-*.whl")
    return built


def fresh_env(tmp_path: Path, wheel: Path, extras: str) -> Path:
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    requirement = f"{wheel}[{extras}]" if extras else str(wheel)
    done = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", requirement])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def installed(venv: Path, modules: list[str]) -> dict[str, bool]:
    done = python_code(venv, f"""
        import importlib.util, json
        print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {modules!r}}}))
    """)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


HEAVY = ["torch", "onnxruntime", "mujoco", "gymnasium", "matplotlib", "ray", "pydantic"]


@pytest.mark.slow
def test_base_install_is_the_robot_side_client(tmp_path: Path, wheel: Path) -> None:
    venv = fresh_env(tmp_path, wheel, "")
    assert not any(installed(venv, HEAVY).values())
    done = python_code(
        venv,
        """
        from controller.link.client import RobotClient
        import zmq, msgpack, numpy
        print("ok")
    """,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    done = run([str(venv / "bin" / "adaptctl"), "serve", "some/artifact"])
    assert done.returncode == 2
    assert "pip install 'adaptctl[runtime]'" in done.stderr and "Traceback" not in done.stderr


def torch_is_local() -> bool:
    """pip would take torch==2.13.0 from a local file (not download a multi-GB build)."""
    done = run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--no-deps", "--quiet", "--report", "-", "torch==2.13.0"])  # fmt: skip
    if done.returncode != 0:
        return False
    items = json.loads(done.stdout)["install"]
    return bool(items) and items[0]["download_info"]["url"].startswith("file:")


@pytest.mark.slow
def test_runtime_install_serves_without_mujoco_gymnasium_or_matplotlib(
    tmp_path: Path, wheel: Path
) -> None:
    if not torch_is_local():
        pytest.skip("torch==2.13.0 is not in a local wheel here; pip would download its CUDA build")
    venv = fresh_env(tmp_path, wheel, "runtime")
    have = installed(venv, HEAVY)
    assert have["torch"] and have["onnxruntime"] and have["pydantic"]
    assert not (have["mujoco"] or have["gymnasium"] or have["matplotlib"] or have["ray"])
    done = python_code(venv, f"""
        import numpy as np
        from controller import Controller
        with Controller.load({str(ROOT / "artifacts" / "cheetah_velocity")!r}) as controller:
            action = controller.act(np.zeros(17, dtype=np.float32))
        assert action.shape == (6,)
        print("ok")
    """)  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    adaptctl = str(venv / "bin" / "adaptctl")
    assert run([adaptctl, "serve", "--help"]).returncode == 0
    done = run([adaptctl, "run", str(ROOT / "artifacts" / "cheetah_velocity"),
                "--target-velocity", "1.0"])  # fmt: skip
    assert done.returncode == 2 and "pip install 'adaptctl[train,video]'" in done.stderr


@pytest.mark.slow
def test_sim_install_makes_the_gymnasium_ids_in_a_fresh_interpreter(
    tmp_path: Path, wheel: Path
) -> None:
    venv = fresh_env(tmp_path, wheel, "sim")
    have = installed(venv, HEAVY)
    assert have["mujoco"] and have["gymnasium"] and not (have["torch"] or have["ray"])
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
