"""Episodes as a video: films side by side, captioned, encoded to MP4 (``adaptctl run --video``).

numpy, Pillow and imageio with its ffmpeg wheel (the ``video`` extra); no MuJoCo and no torch:
the frames come from ``sim.render`` through the sim loop (``controller/simloop.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_HEIGHT = 48
"""Pixels of the band above each film that holds its title and the current step's caption."""
HEADER_HEIGHT = 24
"""Pixels of the band above all films that holds the task."""
_MACRO_BLOCK = 16  # H.264 encodes whole 16x16 blocks: frame sizes are padded to a multiple


class VideoError(RuntimeError):
    """The video cannot be written (the encoder packages are missing, or nothing was filmed)."""


@dataclass
class Film:
    """One episode's frames ([H, W, 3] uint8, one per control step) and a caption per frame."""

    title: str
    frames: list[np.ndarray] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def add(self, frame: np.ndarray, caption: str) -> None:
        self.frames.append(np.asarray(frame, dtype=np.uint8))
        self.captions.append(caption)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _padded(height: int, width: int) -> tuple[int, int]:
    def up(n: int) -> int:
        return -(-n // _MACRO_BLOCK) * _MACRO_BLOCK

    return up(height), up(width)


def compose(films: Sequence[Film], header: str) -> list[np.ndarray]:
    """The films side by side, one output frame per step of the longest film.

    A film that ended earlier (e.g. an episode that terminated) keeps showing its last frame.
    Each film gets its title and its step's caption above it; ``header`` spans the top.
    """
    from PIL import Image, ImageDraw

    if not films or any(not f.frames for f in films):
        raise VideoError("nothing to compose: every film needs at least one frame")
    shapes = {f.frames[0].shape for f in films}
    if len(shapes) != 1:
        raise VideoError(f"films must have frames of one size, got {sorted(shapes)}")
    height, width, _ = shapes.pop()
    total_h, total_w = _padded(HEADER_HEIGHT + CAPTION_HEIGHT + height, width * len(films))
    title_font, text_font = _font(15), _font(13)
    out: list[np.ndarray] = []
    for step in range(max(len(f.frames) for f in films)):
        canvas = Image.new("RGB", (total_w, total_h), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        draw.text((8, 4), header, fill=(0, 0, 0), font=title_font)
        for i, film in enumerate(films):
            k = min(step, len(film.frames) - 1)
            left = i * width
            draw.text(
                (left + 8, HEADER_HEIGHT + 2), film.title, fill=(20, 20, 120), font=title_font
            )
            draw.text(
                (left + 8, HEADER_HEIGHT + 24), film.captions[k], fill=(0, 0, 0), font=text_font
            )
            canvas.paste(Image.fromarray(film.frames[k]), (left, HEADER_HEIGHT + CAPTION_HEIGHT))
        out.append(np.asarray(canvas))
    return out


def require_encoder() -> None:
    """Raise :class:`VideoError` naming the ``video`` extra unless the encoder packages import.

    Commands that film call it before they run anything, so that a missing package is reported
    before the episodes are simulated rather than after.
    """
    try:
        import imageio.v2  # noqa: F401 - the writer
        import imageio_ffmpeg  # noqa: F401 - the encoder binary imageio's FFMPEG plugin runs
        import PIL  # noqa: F401 - the captions
    except ImportError as error:
        raise VideoError(
            f"writing a video needs imageio and imageio-ffmpeg ({error}); "
            "install them with: pip install 'adaptctl[video]'"
        ) from error


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode ``frames`` ([H, W, 3] uint8, sizes multiples of 16) as H.264 MP4 at ``fps``."""
    require_encoder()
    import imageio.v2 as imageio

    if not frames:
        raise VideoError("no frames to encode")
    if fps <= 0:
        raise VideoError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=_MACRO_BLOCK,
        output_params=["-movflags", "+faststart"],
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def write_side_by_side(path: str | Path, films: Sequence[Film], header: str, fps: float) -> Path:
    """One MP4 of ``films`` side by side (see :func:`compose`), at ``fps`` frames per second."""
    return write_mp4(path, compose(films, header), fps)
