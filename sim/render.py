"""Frames of a simulation, drawn from the simulator's own state (numpy and mujoco, no torch).

A MuJoCo family is drawn by ``mujoco.Renderer`` from the batch's model and the MjData of one of
its simulations (:meth:`LocomotionSimulator.get_data`), with a camera that tracks the torso, so a
frame shows the physics that produced the observations. 2D navigation has no MuJoCo model: its
frames are drawn with numpy (the point, its path since the episode began, the goal and the
goal square).

Off-screen rendering needs an OpenGL context. ``import sim`` sets ``MUJOCO_GL=egl`` when it is
unset (headless Linux with EGL, e.g. a server or CI); MuJoCo reads the variable when it is first
imported. Where no context can be made, :class:`RenderError` says so and names ``MUJOCO_GL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import mujoco
import numpy as np

from sim.damage import DamageSimulator, mark_weakened_motors
from sim.locomotion import LocomotionSimulator
from sim.navigation import NavigationSimulator
from sim.simulator import Simulator
from sim.tasks import BodyTask

DEFAULT_SIZE = (240, 320)
"""(height, width) of a frame in pixels unless asked otherwise."""


class RenderError(RuntimeError):
    """No frame can be drawn here (no OpenGL context, or a simulator that cannot be drawn)."""


class FrameRenderer(Protocol):
    """Draws simulation ``index`` of a simulator as an RGB image [H, W, 3] uint8."""

    def frame(self, simulator: Simulator, index: int = 0) -> np.ndarray: ...

    def new_episode(self) -> None:
        """Forget what belongs to the previous episode (e.g. the path drawn so far)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackingCamera:
    """A free camera that follows a body (gymnasium v5's locomotion views: 4 m, from above)."""

    body: int = 1
    """Body id to follow; 1 is the root body (the torso) of the locomotion models."""
    distance: float = 4.0
    elevation: float = -20.0
    azimuth: float = 90.0
    """90: looking along +y, the robot runs left to right."""

    def mjv_camera(self) -> mujoco.MjvCamera:
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        camera.trackbodyid = self.body
        camera.distance = self.distance
        camera.elevation = self.elevation
        camera.azimuth = self.azimuth
        return camera


def gl_backend() -> str:
    """The OpenGL backend MuJoCo was imported with (the value of ``MUJOCO_GL``, '' for glfw)."""
    return os.environ.get("MUJOCO_GL", "")


def _open_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    buffer = (int(model.vis.global_.offheight), int(model.vis.global_.offwidth))
    if height > buffer[0] or width > buffer[1]:
        raise ValueError(
            f"a frame of {height}x{width} pixels exceeds the model's off-screen buffer "
            f"({buffer[0]}x{buffer[1]}, <visual><global offheight offwidth>)"
        )
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as error:  # mujoco raises ImportError, RuntimeError or FatalError here
        backend = gl_backend() or "unset (glfw, which needs a display)"
        raise RenderError(
            f"MuJoCo could not create an OpenGL context (MUJOCO_GL={backend}): {error}. "
            "Headless machines render with MUJOCO_GL=egl (EGL, e.g. Debian's libegl1) or "
            "MUJOCO_GL=osmesa (software); set it before Python imports mujoco."
        ) from error


class MujocoFrameRenderer:
    """Frames of a :class:`LocomotionSimulator` by ``mujoco.Renderer`` (off-screen).

    A :class:`~sim.damage.DamageSimulator`'s simulation is drawn with its own body's model
    (``get_model``: its motor gains, payload and friction, and the limbs of weakened motors
    coloured by :func:`~sim.damage.mark_weakened_motors`); the renderer is reopened on that
    model whenever the simulation's body changes.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        size: tuple[int, int] = DEFAULT_SIZE,
        camera: TrackingCamera | None = None,
    ) -> None:
        self._source = model
        self._size = size
        self._model = model
        self._body: BodyTask | None = None
        self._renderer = _open_renderer(model, size[0], size[1])
        self._camera = (camera or TrackingCamera()).mjv_camera()

    @property
    def model(self) -> mujoco.MjModel:
        """The model the last frame was drawn with (a damaged simulation's own)."""
        return self._model

    def frame(self, simulator: Simulator, index: int = 0) -> np.ndarray:
        if not isinstance(simulator, LocomotionSimulator) or simulator.model is not self._source:
            raise RenderError("this renderer draws the MuJoCo simulator it was made for")
        if isinstance(simulator, DamageSimulator):
            self._follow_body(simulator, index)
        data = simulator.get_data(index)
        mujoco.mj_forward(self._model, data)  # positions of bodies and geoms for the scene
        self._renderer.update_scene(data, camera=self._camera)
        return np.asarray(self._renderer.render(), dtype=np.uint8).copy()

    def _follow_body(self, simulator: DamageSimulator, index: int) -> None:
        """Draw with simulation ``index``'s own body from now on, if it changed."""
        body = simulator.body(index)
        if body is None or body == self._body:
            return
        model = simulator.get_model(index)
        mark_weakened_motors(model, body.motor_gains)
        renderer = _open_renderer(model, self._size[0], self._size[1])
        self._renderer.close()
        self._renderer, self._model, self._body = renderer, model, body

    def new_episode(self) -> None:
        pass

    def close(self) -> None:
        self._renderer.close()


_BACKGROUND = np.array([246, 246, 246], dtype=np.uint8)
_GRID = np.array([222, 222, 222], dtype=np.uint8)
_SQUARE = np.array([150, 150, 150], dtype=np.uint8)
_GOAL = np.array([214, 39, 40], dtype=np.uint8)
_POINT = np.array([31, 119, 180], dtype=np.uint8)
_PATH = np.array([140, 180, 215], dtype=np.uint8)


class NavigationFrameRenderer:
    """Frames of a :class:`NavigationSimulator`, drawn with numpy: the plane around the goal
    square [-0.5, 0.5]^2 (grid every 0.25), the goal (red), the point (blue) and its path."""

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE, extent: float = 0.6) -> None:
        self._height, self._width = size
        self._extent = extent
        self._scale = min(size) / (2.0 * extent)  # pixels per unit, square aspect
        self._path: list[tuple[float, float]] = []
        rows, cols = np.mgrid[0 : self._height, 0 : self._width]
        self._x = (cols + 0.5 - self._width / 2) / self._scale  # world coordinates of pixels
        self._y = (self._height / 2 - rows - 0.5) / self._scale
        self._canvas = self._background()

    def _background(self) -> np.ndarray:
        canvas = np.empty((self._height, self._width, 3), dtype=np.uint8)
        canvas[:] = _BACKGROUND
        for tick in (-0.5, -0.25, 0.0, 0.25, 0.5):  # grid lines, the goal square's edges darker
            color = _SQUARE if abs(tick) == 0.5 else _GRID
            column = round(self._width / 2 + tick * self._scale)
            row = round(self._height / 2 - tick * self._scale)
            canvas[:, min(column, self._width - 1)] = color
            canvas[min(row, self._height - 1), :] = color
        return canvas

    def _disk(
        self, image: np.ndarray, center: np.ndarray, radius: float, color: np.ndarray
    ) -> None:
        mask = (self._x - center[0]) ** 2 + (self._y - center[1]) ** 2 <= radius**2
        image[mask] = color

    def frame(self, simulator: Simulator, index: int = 0) -> np.ndarray:
        if not isinstance(simulator, NavigationSimulator):
            raise RenderError("this renderer draws a NavigationSimulator")
        positions, goals = simulator.positions_and_goals()
        point, goal = positions[index], goals[index]
        self._path.append((float(point[0]), float(point[1])))
        image = self._canvas.copy()
        pixel = 1.0 / self._scale
        for x, y in self._path:
            self._disk(image, np.array([x, y]), 1.5 * pixel, _PATH)
        self._disk(image, goal, 0.03, _GOAL)
        self._disk(image, point, 0.025, _POINT)
        return image

    def new_episode(self) -> None:
        self._path.clear()

    def close(self) -> None:
        pass


NAVIGATION_FRAME_SECONDS = 0.1
"""2D navigation has no physical time step: its frames are shown at 10 per second."""


def frame_seconds(simulator: Simulator) -> float:
    """Simulated seconds between two frames, one per control step (navigation: 0.1)."""
    return float(getattr(simulator, "dt", NAVIGATION_FRAME_SECONDS))


def renderer_for(simulator: Simulator, size: tuple[int, int] = DEFAULT_SIZE) -> FrameRenderer:
    """A frame renderer for ``simulator`` (any family's, from ``family.make_simulator``)."""
    if isinstance(simulator, LocomotionSimulator):
        return MujocoFrameRenderer(simulator.model, size)
    if isinstance(simulator, NavigationSimulator):
        return NavigationFrameRenderer(size)
    raise RenderError(f"no frame renderer for {type(simulator).__name__}")
