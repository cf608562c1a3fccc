"""adaptctl's controller: the policy, its adaptation step, the artifact and the runtime.

``from controller import Controller`` is the embeddable entry point. Names are resolved lazily
(PEP 562), so that importing a light submodule (``controller.link.client`` needs only numpy and
pyzmq on the robot) does not pull in torch and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Controller": "controller.runtime",
    "AdaptReport": "controller.runtime",
    "AdaptTimings": "controller.runtime",
    "SwapReport": "controller.runtime",
    "ControllerConfig": "controller.config",
    "ConfigError": "controller.config",
    "Artifact": "controller.artifact",
    "ArtifactAdaptation": "controller.artifact",
    "ArtifactError": "controller.artifact",
    "ArtifactMetadata": "controller.artifact",
    "IOLayout": "controller.artifact",
    "check_compatible": "controller.artifact",
    "load_artifact": "controller.artifact",
    "save_artifact": "controller.artifact",
    "JournalError": "controller.journal",
    "RecordedEpisode": "controller.journal",
}

__all__ = [
    "AdaptReport",
    "AdaptTimings",
    "Artifact",
    "ArtifactAdaptation",
    "ArtifactError",
    "ArtifactMetadata",
    "ConfigError",
    "Controller",
    "ControllerConfig",
    "IOLayout",
    "JournalError",
    "RecordedEpisode",
    "SwapReport",
    "check_compatible",
    "load_artifact",
    "save_artifact",
]

if TYPE_CHECKING:
    from controller.artifact import (
        Artifact,
        ArtifactAdaptation,
        ArtifactError,
        ArtifactMetadata,
        IOLayout,
        check_compatible,
        load_artifact,
        save_artifact,
    )
    from controller.config import ConfigError, ControllerConfig
    from controller.journal import JournalError, RecordedEpisode
    from controller.runtime import AdaptReport, AdaptTimings, Controller, SwapReport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
