"""What the web app's buttons do, without Gradio: plain functions on an ``AppState``.

Every function checks its input and raises ``UserError`` with the command line's one-line message;
the page shows it (webapp.errors.guarded). Results go to ``<model>/Web/<kind>_<time>/`` under the
models root, trained models to ``<models root>/<image stem>/<run name>/`` as the train command
names them.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MAX_SEED, MODES, draw_seed, PRESETS as CONFIG_PRESETS
from ..errors import UserError
from ..storage.image_files import is_image_name
from ..storage.rundir import RunDir
from .jobs import Job, JobCallbacks, TrainingQueue
from ..storage.paths import inside as confined
from .store import ModelStore, inside, shown

MAX_UPLOAD_MB = 25  # per file (Gradio refuses larger uploads before they reach a handler)
MAX_SAMPLES = 64
MAX_FRAMES = 300
MAX_SCALE = 8.0
MODE_NAMES = list(MODES)
PRESETS = tuple(sorted(CONFIG_PRESETS, key=lambda p: p != "fast"))  # fast first: the page's default


def examples_dir() -> Path:
    """The repository's Images/ folder (examples to train on), next to the package."""
    return Path(__file__).resolve().parents[2] / "Images"


@dataclass
class AppState:
    store: ModelStore
    upload_dir: Path
    device: str = "auto"
    queue: TrainingQueue = field(default_factory=TrainingQueue)
    examples: Path = field(default_factory=examples_dir)

    def serve(self, path: str | os.PathLike) -> str:
        """A copy of a result in the upload folder, for the page to show or download: the server
        serves files from there only, never from the models root."""
        src = Path(path)
        folder = Path(tempfile.mkdtemp(prefix="out-", dir=self.upload_dir))
        dst = folder / src.name
        shutil.copyfile(src, dst)
        return str(dst)

    @property
    def torch_device(self):
        from ..device import resolve_device

        return resolve_device(self.device)


# --- input checks -------------------------------------------------------------------------------

def seed_of(value: Any) -> int:
    """A seed from the page: blank -> a fresh random one (config.draw_seed); else a whole number 0..2^63-1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return draw_seed()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"the seed {value!r} is not a whole number; use 0 to {MAX_SEED}") from None
    if not number.is_integer() or not 0 <= number <= MAX_SEED:
        raise UserError(f"the seed {value} is out of range; use 0 to {MAX_SEED}")
    return int(number)


def whole(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number from {low} to {high}, not {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        raise UserError(f"{what} must be a whole number from {low} to {high}, not {value}")
    return int(number)


def real(value: Any, what: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number from {low:g} to {high:g}, not {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise UserError(f"{what} must be a number from {low:g} to {high:g}, not {value}")
    return number


def readable(state: AppState, path: Any, what: str) -> Path:
    """A file the page may read: an upload (in the upload folder), an example image, or a file under
    the models root. Anything else is refused."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise UserError(f"no {what} given; upload one")
    p = Path(str(path))
    if not any(inside(root, p) for root in (state.upload_dir, state.examples, state.store.root)):
        raise UserError(f"the {what} {p.name} is not an upload of this page; upload it again")
    if not p.is_file():
        raise UserError(f"the {what} {p.name} is gone (uploads are kept while the app runs); upload it again")
    if p.stat().st_size > MAX_UPLOAD_MB * 2**20:
        raise UserError(f"the {what} is larger than {MAX_UPLOAD_MB} MB; use a smaller file")
    check_pixel_count(p, what)
    return p


def check_pixel_count(path: Path, what: str) -> None:
    """An image file (its header only, nothing decoded), held to storage.image_files.MAX_IMAGE_PIXELS."""
    from ..storage.image_files import image_size

    image_size(path, f"the {what}")


def examples(state: AppState) -> list[str]:
    """Example training images, relative to Images/ (e.g. Generation/rocket.png)."""
    if not state.examples.is_dir():
        return []
    return sorted(p.relative_to(state.examples).as_posix() for p in state.examples.rglob("*")
                  if is_image_name(p) and "_mask" not in p.stem)


def example_path(state: AppState, name: str) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"the example {name!r} is not in the list; pick one from it")
    path = state.examples / rel
    if not path.is_file():
        raise UserError(f"the example {name!r} is not in the list; pick one from it")
    return path


def training_source(state: AppState, upload: Any, example: str | None) -> Path:
    """The uploaded image, else the example picked."""
    if upload:
        return readable(state, upload, "training image")
    if example:
        return example_path(state, example)
    raise UserError("no training image given; upload a photo or pick an example")


# --- training -----------------------------------------------------------------------------------

def make_settings(mode: str, preset: str, max_size: Any = None, train_stages: Any = None, niter: Any = None,
                  nfc: Any = None, min_size: Any = None, seed: Any = None, sr_factor: Any = None,
                  paint_colors: Any = None) -> dict[str, Any]:
    """The page's settings as consingan.prepare takes them (blank: the mode's and the preset's default),
    checked by Config's own rules (the same messages as the command line's flags)."""
    from ..config import make_config

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; use one of: {', '.join(PRESETS)}")

    def given(v):
        return v is not None and not (isinstance(v, str) and not v.strip())

    settings: dict[str, Any] = {"train_mode": mode, "preset": preset}
    for key, v in (("max_size", max_size), ("train_stages", train_stages), ("niter", niter), ("nfc", nfc),
                   ("min_size", min_size)):
        if given(v):
            settings[key] = integer(v, key)
    if mode == "superres" and given(sr_factor):
        settings["sr_factor"] = number(sr_factor, "sr_factor")
    if mode == "paint" and given(paint_colors):
        settings["paint_colors"] = integer(paint_colors, "paint_colors")
    settings["manualSeed"] = seed_of(seed)
    make_config(**settings)  # the ranges are Config's: refused here, with the flag's message
    return settings


def integer(value: Any, what: str) -> int:
    """A whole number from the page (its range is checked where the setting lives)."""
    try:
        number_ = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, not {value!r}") from None
    if not number_.is_integer():
        raise UserError(f"{what} must be a whole number, not {value}")
    return int(number_)


def number(value: Any, what: str) -> float:
    """A number from the page (its range is checked where the setting lives)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, not {value!r}") from None


def prepared(state: AppState, image_path: Path, settings: dict[str, Any], threads: int | None = None):
    """The run the settings make on the image (consingan.prepare: as the train command prepares it).
    ``threads``: None, the thread rule (it looks at the machine's load for 0.2 s)."""
    from .. import api

    return api.prepare(image_path, device=state.torch_device, input_name=image_path.name,
                       run_info={"trained_with": "web app"}, threads=threads, **settings)


def estimate_text(state: AppState, image_path: Path | None, settings: dict[str, Any]) -> str:
    import warnings

    from ..core.cost import describe_seconds
    from ..plan import estimate_for

    import torch

    device = state.torch_device
    if image_path is not None:
        with warnings.catch_warnings():  # shown when training starts, not at every keystroke
            warnings.simplefilter("ignore")
            # the estimate measures with torch's current threads anyway: no look at the load per keystroke
            plan = prepared(state, image_path, settings, threads=torch.get_num_threads())
        estimate, config = plan.estimate, plan.config
        h, w = plan.sizes[-1]
        where = f"training size of {h}x{w}"
    else:
        from ..config import make_config

        config = make_config(**settings)
        estimate = estimate_for(config, 167, 250, device)
        where = "250-px image"
    iters = "/".join(str(n) for n in estimate.stage_niter)
    return (f"Expected time on this machine ({device.type}): **about {describe_seconds(estimate.seconds)}** for a "
            f"{where} ({config.train_stages} stages, {iters} iterations)")


def start_training(state: AppState, image_path: Path, settings: dict[str, Any]) -> Job:
    from .. import api

    plan = prepared(state, image_path, settings)
    out = api.default_out_dir(plan.input_name, plan.config, root=state.store.root)
    timer = plan.estimate.time_left()

    def run(job: Job):
        return api.train(plan, out_dir=out, callbacks=[StageSamples(job)], stop=job.stop)

    return state.queue.submit("train", f"{plan.config.train_mode} on {plan.input_name}", out, run, timer=timer)


def resume_training(state: AppState, name: str) -> Job:
    from .. import api

    folder = state.store.folder(name, "run")
    if name not in state.store.interrupted():
        raise UserError(f"{shown(name)} is not an interrupted run (no checkpoint.pt without a model.pt); pick one "
                        "from the list")

    def run(job: Job):
        return api.resume(folder, device=state.device, callbacks=[StageSamples(job)], stop=job.stop)

    return state.queue.submit("resume", f"resume {name}", folder, run)


def fine_tune(state: AppState, name: str, naive_path: Path, niter: Any, seed: Any) -> Job:
    from .. import api
    from ..tasks.harmonize import fine_tune_dir, harmonize

    model = state.store.load(name)
    if model.config.mode.result_name is None:
        raise UserError(f"fine-tuning works with harmonization or editing models only, and {name} was trained "
                        f"with --train_mode {model.config.train_mode}")
    src = state.store.model_dir(name)
    out = confined(state.store.root, fine_tune_dir(src), "output folder")
    niter = whole(niter, "fine-tuning iterations", 1, 100000)
    seed = seed_of(seed)

    def run(job: Job):
        tuned = api.fine_tune(src, naive_path, niter=niter, manualSeed=seed, out_dir=out, device=state.device,
                              callbacks=[StageSamples(job)], stop=job.stop)
        result, _ = harmonize(tuned, api.read_image(naive_path), seed=seed)
        from ..core.image import to_uint8

        with job.lock:
            job.result = to_uint8(result[0])
            job.version += 1
        return tuned

    return state.queue.submit("fine-tune", f"fine-tune {name}", out, run)


class StageSamples(JobCallbacks):
    """The job's callbacks, plus a few samples and the reconstruction at the end of every stage."""

    def on_stage_end(self, stage, model):
        from ..core.image import grid, to_uint8
        from ..model import ConSinGAN

        m = ConSinGAN.of(model)  # sampling leaves G in train mode: training goes on
        # harmonization and editing models take an image at stage 0: samples from noise mean little
        images = m.sample(4, seed=0) if m.config.mode.result_name is None else None
        rec = m.reconstruct()
        with self.job.lock:
            if images is not None:
                self.job.samples = to_uint8(grid(images, columns=4)[0])
            self.job.reconstruction = to_uint8(rec[0])
            self.job.version += 1


# --- results ------------------------------------------------------------------------------------

def sample(state: AppState, name: str, num: Any, seed: Any, scale_h: Any, scale_w: Any,
           start_scale: Any) -> tuple[list[str], str, Path]:
    """Samples into <model>/Web/samples_<time>/: (image files, zip file, folder)."""
    from .. import api
    from ..plan import check_samples

    model = state.store.load(name)
    n = whole(num, "number of samples", 1, MAX_SAMPLES)
    sh = real(scale_h, "height scale", 0.1, MAX_SCALE)
    sw = real(scale_w, "width scale", 0.1, MAX_SCALE)
    start = whole(start_scale or 0, "start scale", 0, model.num_stages)
    seed = seed_of(seed)
    check_samples(model, sh, sw, n)
    out = state.store.results_dir(name, "samples")
    folder = api.write_samples(model, out, num_samples=n, scale_h=sh, scale_w=sw, seed=seed, start_scale=start)
    files = sorted(folder.glob("gen_sample_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    archive = out / f"samples_seed_{seed}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f.name)
    return [str(f) for f in files], str(archive), out


def model_image(model) -> np.ndarray:
    """The model's training image, HxWx3 uint8."""
    from ..core.image import to_uint8

    return to_uint8(model.real[0].cpu())


def naive_mode_model(state: AppState, name: str):
    model = state.store.load(name)
    if model.config.mode.result_name is None:
        raise UserError(f"harmonizing works with harmonization or editing models only, and {name} was trained with "
                        f"--train_mode {model.config.train_mode}; train one in the Train tab")
    return model


def compose_object(state: AppState, name: str, obj_path: Any, x: Any, y: Any, scale: Any) -> tuple[np.ndarray, np.ndarray]:
    """The object pasted onto the model's training image at (x, y) (fractions of the width and height
    for the object's centre) and ``scale`` (of the object's own size): (naive, mask) uint8 arrays."""
    from ..storage.image_files import read_array
    from ..tasks.compose import compose

    model = naive_mode_model(state, name)
    obj = read_array(readable(state, obj_path, "object"), "object")
    bg = model_image(model)
    s = real(scale, "object scale", 0.01, 10)
    fx, fy = real(x, "x", 0, 1), real(y, "y", 0, 1)
    oh, ow = max(1, round(obj.shape[0] * s)), max(1, round(obj.shape[1] * s))
    H, W = bg.shape[:2]
    left, top = round(fx * W - ow / 2), round(fy * H - oh / 2)
    return compose(bg, obj, left, top, scale=s)


def editor_parts(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """An ImageEditor value -> (naive HxWx3 uint8, mask HxW bool): the background is the naive image,
    the strokes drawn on the layers are the mask."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise UserError("no naive image given; upload one into the editor and draw over the pasted object")
    bg = _as_array(value["background"])
    naive = bg[:, :, :3] if bg.ndim == 3 else np.repeat(bg[:, :, None], 3, axis=2)
    mask = np.zeros(naive.shape[:2], bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        arr = _as_array(layer)
        if arr.shape[:2] != mask.shape:
            raise UserError(f"a drawn layer is {arr.shape[0]}x{arr.shape[1]} but the naive image is "
                            f"{mask.shape[0]}x{mask.shape[1]}; draw on the uploaded image itself")
        mask |= (arr[:, :, 3] > 0) if arr.ndim == 3 and arr.shape[2] == 4 else (arr.max(axis=-1) > 0 if arr.ndim == 3 else arr > 0)
    if not mask.any():
        raise UserError("the mask is empty; draw over the pasted object with the brush (any colour)")
    return naive.astype(np.uint8), mask


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    else:
        from PIL import Image

        from ..storage.image_files import image_size

        image_size(str(value), "image")  # the size from the header, before Pillow decodes it
        with Image.open(str(value)) as im:
            arr = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB"))
    from ..storage.image_files import check_array_size

    check_array_size(arr, "the image")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def harmonize(state: AppState, name: str, naive: np.ndarray, mask: np.ndarray, seed: Any
              ) -> tuple[str, str, Path]:
    """Writes naive.png, naive_mask.png and the results (harmonized_wo_mask.png, harmonized_w_mask.png,
    or edited_*) into <model>/Web/harmonize_<time>/: (raw result, blended result, folder)."""
    from ..storage.image_files import save_image
    from ..core.image import from_numpy
    from ..tasks.harmonize import write_results
    import torch

    model = naive_mode_model(state, name)
    seed = seed_of(seed)
    out = state.store.results_dir(name, "harmonize")
    naive_file, mask_file = out / "naive.png", out / "naive_mask.png"
    save_image(from_numpy(naive), naive_file)
    save_image(torch.from_numpy(mask.astype(np.float32) * 2 - 1)[None, None].expand(1, 3, -1, -1), mask_file)
    files = write_results(model, naive_file, out, mask_path=mask_file, seed=seed)
    return str(files[0]), str(files[1]), out


def animate(state: AppState, name: str, start_scale: Any, alpha: Any, beta: Any, frames: Any, fps: Any,
            seed: Any, fmt: str) -> str:
    from ..tasks.animate import Walk, write_animations

    model = state.store.load(name)
    walk = Walk(start_scale=whole(start_scale, "start scale", 0, model.num_stages - 1),
                alpha=real(alpha, "alpha", 0, 1), beta=real(beta, "beta", 0, 1),
                num_frames=whole(frames, "frames", 1, MAX_FRAMES), fps=real(fps, "fps", 0.1, 100))
    out = state.store.results_dir(name, "animation")
    return str(write_animations(model, out, [walk], seed=seed_of(seed), fmt=fmt or "gif")[0])


def explore(state: AppState, name: str, x: Any, y: Any, seed: Any, start_scale: Any, preview: bool) -> np.ndarray:
    from ..core.image import to_uint8
    from .explore import render

    model = state.store.load(name)
    seed = seed_of(0 if seed in (None, "") else seed)
    image = render(model, real(x, "x", -10, 10), real(y, "y", -10, 10), seed,
                   whole(start_scale, "start scale", 0, model.num_stages - 1), preview=preview)
    if tuple(image.shape[-2:]) != tuple(model.shapes[-1]):  # the preview's lower stage, shown at the full size
        import torch.nn.functional as F

        image = F.interpolate(image, size=tuple(model.shapes[-1]), mode="bilinear", align_corners=False)
    return to_uint8(image[0])


def paint_canvas(state: AppState, name: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(the canvas: the model's stage-0 image in its palette colours at the training size, the palette as
    hex colours, a swatch image)."""
    import torch.nn.functional as F

    from ..core.image import to_uint8
    from ..tasks import paint

    model = state.store.load(name)
    paint.require_image_stage0(model.config, "painting")
    palette = paint.model_palette(model)
    stage0 = paint.quantise(model.reals()[0].cpu(), palette)
    canvas = F.interpolate(stage0, size=tuple(model.real.shape[-2:]), mode="nearest")
    return to_uint8(canvas[0]), [paint.hex_colour(c) for c in palette], to_uint8(paint.swatch(palette, 32)[0])


def paint_images(state: AppState, name: str, painting: Any, num: Any, seed: Any) -> tuple[list[str], Path]:
    from ..storage.image_files import save_image
    from ..core.image import from_numpy
    from ..tasks import paint

    model = state.store.load(name)
    if isinstance(painting, dict):  # an ImageEditor value: what the canvas shows
        painting = painting.get("composite")
    if painting is None:
        raise UserError("no painting given; paint on the canvas (load the model's colours first)")
    arr = _as_array(painting)
    if arr.ndim == 3 and arr.shape[2] == 4:
        if (arr[:, :, 3] < 255).any():
            raise UserError("the painting has transparent pixels; paint over the whole canvas (load the model's "
                            "colours first: they fill it)")
        arr = arr[:, :, :3]
    out = state.store.results_dir(name, "paint")
    painting_file = out / "painting.png"
    save_image(from_numpy(arr), painting_file)
    files = paint.write_results(model, painting_file, out, num_samples=whole(num, "number of images", 1, 16),
                                seed=seed_of(seed))
    return [str(f) for f in files if f.name.startswith("painted_")], out


def super_resolve(state: AppState, name: str, factor: Any, seed: Any) -> tuple[str, str, Path]:
    from ..tasks import superres

    model = state.store.load(name)
    superres.require_superres(model.config, "super-resolution")
    f = real(factor, "factor", 1.01, 16)
    out = state.store.results_dir(name, "superres")
    sr, bicubic = superres.write_results(model, out, f, seed=seed_of(seed))
    return str(sr), str(bicubic), out


def models_table(state: AppState) -> list[list[str]]:
    """One row per model: name, mode, stages, the size it trained at (width x height of its training
    image, which max_size only bounds), when."""
    from .choices import training_size

    rows = []
    for name in state.store.models():
        folder = state.store.root / name
        info = state.store.info(name)
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(RunDir(folder).model_file.stat().st_mtime))
        size = training_size(folder)
        rows.append([name, str(info.get("train_mode", "?")), str(info.get("train_stages", "?")),
                     f"{size[0]}x{size[1]}" if size else "?", stamp])
    return rows


def models_of(state: AppState, modes: tuple[str, ...] | None = None) -> list[str]:
    """Model names, those trained in one of ``modes`` (from config.json) when given."""
    names = state.store.models()
    if modes is None:
        return names
    return [name for name in names if state.store.info(name).get("train_mode") in modes]


def new_upload_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="consingan-app-"))
    return path


def remove_upload_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
