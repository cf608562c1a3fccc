"""Build hook: ship ``adaptctl_gymnasium.pth`` at the top of the wheel (site-packages).

Everything else is in pyproject.toml. The .pth registers adaptctl's gymnasium ids when gymnasium
is imported (see adaptctl_gymnasium.py); setuptools has no declarative way to install one.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "adaptctl_gymnasium.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
