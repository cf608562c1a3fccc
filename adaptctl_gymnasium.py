"""adaptctl's gymnasium ids, registered when gymnasium is imported: no adaptctl import first.

gymnasium 1.x has no plugin entry points (0.26-0.29 read ``gymnasium.envs``; 1.0 removed it), so
an installed package cannot register ids through its metadata. Instead the wheel installs
``adaptctl_gymnasium.pth``, which Python's ``site`` runs at start-up: it calls :func:`install`,
which only puts a finder on ``sys.meta_path`` (no import of gymnasium, numpy or MuJoCo). When
the interpreter first imports ``gymnasium``, the finder lets gymnasium load as usual and then
registers the ids of ``sim/gym_ids.py`` by name (``sim.gym_envs:TaskFamilyEnv``), reading that
file without importing the ``sim`` package, so nothing of adaptctl (nor MuJoCo) is imported until
an environment is made::

    import gymnasium
    env = gymnasium.make("adaptctl/HalfCheetahVel-v0", task=1.0, render_mode="rgb_array")

This module imports nothing of adaptctl: it stays a standard-library module that must never
fail an interpreter's start. ``sim.gym_envs`` registers the same ids when imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any


def _id_table() -> tuple[dict[str, tuple[str, int]], str]:
    """``sim/gym_ids.py``'s (ENV_IDS, ENTRY_POINT), loaded from its file: ``sim`` is not run."""
    package = importlib.util.find_spec("sim")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the sim package of adaptctl is not installed")
    path = os.path.join(next(iter(package.submodule_search_locations)), "gym_ids.py")
    spec = importlib.util.spec_from_file_location("_adaptctl_gym_ids", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot read {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ENV_IDS, module.ENTRY_POINT


def register(gymnasium: Any) -> None:
    """Register every adaptctl id not registered yet (idempotent)."""
    env_ids, entry_point = _id_table()
    for env_id, (family, horizon) in env_ids.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=entry_point,
                max_episode_steps=horizon,
                kwargs={"family": family},
            )


class _RegisteringLoader(importlib.abc.Loader):
    """gymnasium's own loader, then :func:`register` on the loaded module."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            register(module)
        except Exception as error:  # never break gymnasium's import for the ids
            warnings.warn(f"adaptctl: gymnasium ids not registered: {error}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # resource readers etc.: gymnasium's loader
        return getattr(self._loader, name)


class _GymnasiumFinder(importlib.abc.MetaPathFinder):
    """Finds ``gymnasium`` through the other finders once, wrapping its loader."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "gymnasium":
            return None
        uninstall()  # one shot, and the lookup below must not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register the ids when gymnasium is imported (now, if it already is)."""
    if "gymnasium" in sys.modules:
        register(sys.modules["gymnasium"])
    elif not any(isinstance(f, _GymnasiumFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _GymnasiumFinder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _GymnasiumFinder)]
