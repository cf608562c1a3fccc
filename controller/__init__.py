"""adaptctl's controller: the policy, its adaptation step, the artifact and the runtime.

``from controller import Controller`` is the embeddable entry point. Names are resolved lazily
(PEP 562), so that importing a light submodule (``controller.link.client`` needs only numpy and
pyzmq on the robot) does not pull in torch and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name, once, under the module that defines it; ``__all__`` and the lazy lookup
# derive from this table. The block below repeats the imports for type checkers only
# (tests/test_package_exports.py checks that the two agree).
_EXPORTS_BY_MODULE: dict[str, tuple[str, ...]] = {
    "controller.runtime": ("Controller", "AdaptReport", "AdaptTimings", "SwapReport"),
    "controller.config": ("ControllerConfig", "ConfigError"),
    "controller.artifact": (
        "Artifact", "ArtifactAdaptation", "ArtifactError", "ArtifactMetadata", "IOLayout",
        "check_compatible", "load_artifact", "save_artifact",
    ),
    "controller.journal": ("JournalError", "RecordedEpisode"),
}  # fmt: skip
_EXPORTS = {name: module for module, names in _EXPORTS_BY_MODULE.items() for name in names}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the table's names for type checkers (F401: re-exported, not used here)
    from controller.artifact import (  # noqa: F401
        Artifact,
        ArtifactAdaptation,
        ArtifactError,
        ArtifactMetadata,
        IOLayout,
        check_compatible,
        load_artifact,
        save_artifact,
    )
    from controller.config import ConfigError, ControllerConfig  # noqa: F401
    from controller.journal import JournalError, RecordedEpisode  # noqa: F401
    from controller.runtime import AdaptReport, AdaptTimings, Controller, SwapReport  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
