"""Animation: a random walk around the fixed noise, written as a GIF or MP4 (docs/method.md section 4, animation).

    model = consingan.load("TrainedModels/lightning/<run>")
    frames = animate(model, Walk(start_scale=1, beta=0.9, num_frames=50), seed=0)  # Fx3xHxW in [-1, 1]
    write_animations(model, "out", reference_walks(), seed=0)  # the reference's 12 GIFs

Every stage's noise map moves on its own: the walk keeps momentum ``beta`` (higher: smoother,
slower change) and is pulled back towards the fixed noise by ``alpha`` (higher: frames stay closer
to the reconstruction). Stages below ``start_scale`` keep the fixed noise, so the coarse layout
stays put and only finer detail moves.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..core.image import to_uint8
from ..core.networks import evaluating
from ..core.noise import gaussian
from ..progress import count_progress
from .sampling import _batch_size, make_generator

# The set the reference writes for an animation model.
REFERENCE_START_SCALES = (0, 1, 2)
REFERENCE_BETAS = (0.80, 0.85, 0.90, 0.95)
DEFAULT_ALPHA = 0.1
DEFAULT_NUM_FRAMES = 100
DEFAULT_FPS = 10.0
FORMATS = ("gif", "mp4")


@dataclass(frozen=True)
class Walk:
    """One animation: where the walk starts moving, how it moves, how long and how fast it plays."""

    start_scale: int = 0
    alpha: float = DEFAULT_ALPHA
    beta: float = 0.9
    num_frames: int = DEFAULT_NUM_FRAMES
    fps: float = DEFAULT_FPS

    def file_name(self, fmt: str = "gif") -> str:
        # str(float) as the reference formats them, so its file names come out the same (beta=0.8).
        return f"start_scale={self.start_scale}_alpha={float(self.alpha)}_beta={float(self.beta)}.{fmt}"

    def check(self, model) -> "Walk":
        stages = model.num_stages
        checks = [
            (0 <= self.start_scale < stages,
             f"--start_scale {self.start_scale} is out of range for a model with {stages} stages; "
             f"use 0 to {stages - 1} (at {stages} every frame would be the reconstruction)"),
            (0.0 <= self.alpha <= 1.0, f"--alpha {self.alpha} must be between 0 and 1 (paper: 0.1)"),
            (0.0 <= self.beta <= 1.0, f"--beta {self.beta} must be between 0 and 1 (paper: 0.80 to 0.95)"),
            (self.num_frames >= 1, f"--num_frames {self.num_frames} must be at least 1"),
            (self.fps > 0, f"--fps {self.fps} must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


def reference_walks(start_scale: int | None = None, alpha: float | None = None, beta: float | None = None,
                    num_frames: int | None = None, fps: float | None = None) -> list[Walk]:
    """The reference's set (start_scale 0/1/2 x beta 0.80..0.95), narrowed by each value given:
    start_scale and beta given -> one walk; only one of them -> that row or column of the set."""
    scales = REFERENCE_START_SCALES if start_scale is None else (start_scale,)
    betas = REFERENCE_BETAS if beta is None else (beta,)
    return [Walk(s, DEFAULT_ALPHA if alpha is None else alpha, b,
                 DEFAULT_NUM_FRAMES if num_frames is None else num_frames,
                 DEFAULT_FPS if fps is None else fps)
            for s, b in itertools.product(scales, betas)]


def walk_noise(model, walk: Walk, generator: torch.Generator | None = None) -> Iterator[list[torch.Tensor]]:
    """The noise list of each frame (1xCxHxW per stage)."""
    config, device, fixed = model.config, model.device, model.fixed
    a, b = walk.alpha, walk.beta

    def draw() -> list[torch.Tensor]:
        # Every stage draws every frame, also those that keep the fixed noise: the same seed then
        # gives the same moves in the moving stages whatever start_scale is.
        return [gaussian(config, k, shape, device, generator) for k, shape in enumerate(model.shapes)]

    z1 = [0.99 * f + 0.01 * r for f, r in zip(fixed, draw())]
    z2 = list(fixed)
    for _ in range(walk.num_frames):
        frame = []
        for k, r in enumerate(draw()):
            if k < walk.start_scale:
                z = fixed[k]
            else:
                d = b * (z1[k] - z2[k]) + (1 - b) * r
                z = a * fixed[k] + (1 - a) * (z1[k] + d)
            frame.append(z)
        z2, z1 = z1, frame
        yield frame


def frame_batches(model, walk: Walk, seed: int | None = None) -> Iterator[torch.Tensor]:
    """The frames, a few at a time (Bx3xHxW in [-1, 1]); only one batch of noise is held at once."""
    G = model.G
    noise = walk_noise(model, walk, make_generator(model.device, seed))
    size = _batch_size(model)
    with torch.no_grad():
        while batch := list(itertools.islice(noise, size)):
            stacked = [torch.cat([frame[k] for frame in batch]) for k in range(model.num_stages)]
            with evaluating(G):  # only around the call: G is as it was while the caller holds a batch
                frames = G(stacked, model.shapes, model.amps)
            yield frames


def animate(model, walk: Walk | None = None, seed: int | None = None) -> torch.Tensor:
    """All frames of one walk, Fx3xHxW in [-1, 1]. The same seed gives the same frames."""
    walk = (walk or Walk()).check(model)
    return torch.cat(list(frame_batches(model, walk, seed)))


def uint8_frames(model, walk: Walk, seed: int | None = None) -> np.ndarray:
    """FxHxWx3 uint8: what goes into the file (all frames at once; write_animations streams them)."""
    return np.stack(list(uint8_frame_stream(model, walk, seed)))


def uint8_frame_stream(model, walk: Walk, seed: int | None = None) -> Iterator[np.ndarray]:
    """The frames one at a time (HxWx3 uint8), computed a batch at a time: memory does not grow with
    the number of frames."""
    for batch in frame_batches(model, walk, seed):
        for img in batch:
            yield to_uint8(img)


def require_writer(fmt: str) -> None:
    """Fail before any frame is computed when the file cannot be written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it)
        except ImportError:
            raise UserError("writing MP4 needs the imageio-ffmpeg package: pip install imageio-ffmpeg "
                            "(or write GIFs with --format gif)") from None


def write_frames(frames: Iterable[np.ndarray], path: Path, fps: float, fmt: str,
                 on_frame: Callable[[int], None] | None = None) -> None:
    """Write HxWx3 uint8 frames (an iterable, or an FxHxWx3 array) as they come: one frame is held at
    a time. The file appears under ``path`` only once complete, and never over an existing file
    (outputs.temp_file); ``on_frame(count)`` after each frame."""
    from ..storage.outputs import temp_file

    with temp_file(path, overwrite=False, keep_suffix=True) as tmp:
        if fmt == "gif":
            with open(tmp, "wb") as f:
                gif = GifStream(f, duration_ms=1000.0 / fps, loop=0)
                for i, frame in enumerate(frames, 1):
                    gif.write(frame)
                    f.flush()  # on disk as it comes (a watcher sees the file grow)
                    if on_frame is not None:
                        on_frame(i)
                gif.close()
        else:
            import imageio.v2 as iio2

            # imageio's FFMPEG writer pipes each frame to ffmpeg as it comes.
            with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, macro_block_size=2) as writer:
                for i, frame in enumerate(frames, 1):
                    # H.264 in yuv420p needs even sides: repeat the last row/column rather than let imageio resize.
                    h, w = frame.shape[:2]
                    writer.append_data(np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))
                    if on_frame is not None:
                        on_frame(i)


class GifStream:
    """An animated GIF written frame by frame (Pillow's own GIF writer holds every frame until the end).

    Each frame gets its own adaptive palette, as Pillow's writer gives it (the first one in the
    global colour table, the others in a local one); ``duration_ms`` per frame, ``loop`` 0: forever.
    """

    def __init__(self, fp, duration_ms: float, loop: int = 0):
        self.fp, self.duration, self.loop = fp, duration_ms, loop
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        from PIL import GifImagePlugin, Image

        im = Image.fromarray(np.ascontiguousarray(frame), "RGB").convert("P", palette=Image.Palette.ADAPTIVE)
        # getheader: the palette reduced to the colours used (as Pillow's writer does), and the header.
        header, _ = GifImagePlugin.getheader(im, None, {"optimize": True, "loop": self.loop,
                                                        "duration": self.duration})
        if self.count == 0:
            self.fp.write(b"".join(header))
        params = {"duration": self.duration, "include_color_table": self.count > 0}
        self.fp.write(b"".join(GifImagePlugin.getdata(im, (0, 0), **params)))
        self.count += 1

    def close(self) -> None:
        self.fp.write(b";")  # the GIF trailer


def write_animations(model, out: str | Path, walks: Sequence[Walk], seed: int | None = None, fmt: str = "gif",
                     on_written: Callable[[Path], None] | None = None, progress: str = "none") -> list[Path]:
    """Write one file per walk into ``out`` (named as the reference names them) and return the paths.

    Each walk starts from ``seed`` on its own, so one file of the set can be remade alone with the same
    flags. Every setting and every target is checked before anything is written; an existing file is
    an error, never overwritten. Meant for animation models (random stage-0 fixed noise); other
    models animate too, but their stage-0 walk circles the training image itself.

    Frames are written as they are made (memory does not grow with ``num_frames``), each file
    atomically; ``progress``: "auto" (a bar on a terminal), "plain" or "none".
    """
    out = Path(out)
    walks = [w.check(model) for w in walks]
    require_writer(fmt)
    paths = [out / w.file_name(fmt) for w in walks]
    for p in paths:
        if p.exists():
            raise UserError(f"{p} already exists; choose another --out folder (nothing was overwritten)")
    if len(set(paths)) != len(paths):
        raise UserError("two animations would have the same file name; give distinct settings")
    out.mkdir(parents=True, exist_ok=True)
    for walk, path in zip(walks, paths):
        with count_progress(progress, walk.num_frames, f"frames of {path.name}") as bar:
            write_frames(uint8_frame_stream(model, walk, seed), path, walk.fps, fmt, on_frame=bar)
        if on_written is not None:
            on_written(path)
    return paths
