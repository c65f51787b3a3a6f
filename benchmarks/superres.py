"""Super-resolution against bicubic on photos the project does not train on (docs/method.md 5).

For each photo: the original shrunk to a long side of --hr_size (the "high resolution" truth), that
shrunk 4x with the project's resize (the low-resolution input), a ``superres`` model trained on the
small one, which is then enlarged 4x and compared with the truth: PSNR (peak-to-peak 2 in [-1, 1]
units, i.e. the usual 8-bit PSNR) and the patch SWD of consingan.metrics (x1e3, lower: patch
statistics closer to the truth's). Rows: bicubic, bicubic with the same back-projection the model's
result gets, and the model with 1, 2 and SinGAN's round(ln 4 / ln 2^(1/3)) = 6 steps, with and
without back-projection.

    python benchmarks/superres.py --out benchmarks/results/superres      # about 15 min on 1 busy core

Writes results.json and, per photo, a crop bicubic | SR | original (crop_<name>.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("astronaut", "chelsea", "immunohistochemistry")  # skimage.data, none of them in Images/


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """8-bit PSNR of two images in [-1, 1] (both rounded to 8-bit levels first, as files are)."""
    from consingan.core.image import to_uint8

    x, y = (torch.from_numpy(to_uint8(t)).double() for t in (a, b))
    return float(10 * torch.log10(255.0 ** 2 / (x - y).pow(2).mean()))


def photo(name: str, hr_size: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth, low-resolution input): the photo at a long side of hr_size, trimmed to a multiple of
    ``factor``, and that shrunk ``factor`` times."""
    import skimage.data

    from consingan.core.image import from_numpy, resize

    full = from_numpy(getattr(skimage.data, name)())
    h, w = full.shape[-2:]
    s = hr_size / max(h, w)
    hr = resize(full, (round(h * s), round(w * s)))
    hh, ww = (hr.shape[-2] // factor) * factor, (hr.shape[-1] // factor) * factor
    hr = hr[..., :hh, :ww]
    return hr, resize(hr, (hh // factor, ww // factor))


def crop_strip(images: list[torch.Tensor], side: int = 96) -> torch.Tensor:
    """The same central ``side`` x ``side`` crop of each image, side by side with a white gap."""
    h, w = images[0].shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    crops = [im[..., top:top + side, left:left + side] for im in images]
    gap = torch.ones(1, 3, side, 2)
    parts = [crops[0]]
    for c in crops[1:]:
        parts += [gap, c]
    return torch.cat(parts, dim=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/superres")
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--hr_size", type=int, default=256)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--train_stages", type=int, default=4)
    p.add_argument("--niter", type=int, default=300)
    p.add_argument("--nfc", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="/tmp/consingan_superres_models", help="where the trained models go")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from consingan import api
    from consingan.metrics import swd
    from consingan.storage.image_files import save_image
    from consingan.tasks import superres

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(train_stages=args.train_stages, niter=args.niter, nfc=args.nfc, manualSeed=args.seed,
                    sr_factor=float(args.factor), precision="fp32")
    results = {"settings": {**settings, "hr_size": args.hr_size, "threads": args.threads,
                            "torch": torch.__version__}, "photos": {}}
    singan_steps = superres.sr_steps(args.factor)[0]
    for name in args.photos.split(","):
        hr, lr = photo(name, args.hr_size, args.factor)
        config = superres.superres_config(lr, api.make_config("superres", **settings))
        t0 = time.time()
        model_dir = Path(args.models) / f"{name}_{time.strftime('%H%M%S')}"
        model = api.train(lr, config, out_dir=model_dir)
        seconds = time.time() - t0
        bicubic = superres.bicubic(model.real, args.factor)
        rows = {"bicubic": bicubic,
                "bicubic + back-projection": superres.back_project(bicubic, model.real)}
        for steps in sorted({1, 2, singan_steps}):
            for bp in (0, superres.BACK_PROJECTION):
                rows[f"SR {steps} step{'s' if steps > 1 else ''}" + (" + back-projection" if bp else "")] = \
                    superres.super_resolve(model, args.factor, seed=args.seed, steps=steps, back_projection=bp)
        table = {k: {"psnr": psnr(v, hr), "swd": swd(v, hr, seed=0)} for k, v in rows.items()}
        results["photos"][name] = {"hr": list(hr.shape[-2:]), "lr": list(lr.shape[-2:]),
                                   "min_size": config.min_size, "train_seconds": round(seconds, 1),
                                   "rec_rmse": float((model.reconstruct() - model.real).pow(2).mean().sqrt()),
                                   "rows": table}
        default = model.super_resolve(args.factor, seed=args.seed)
        save_image(crop_strip([bicubic, default, hr]), out / f"crop_{name}.png")
        print(name, json.dumps(results["photos"][name], indent=1), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    names = list(results["photos"])
    rows = list(next(iter(results["photos"].values()))["rows"])
    head = "| result | " + " | ".join(f"{n} PSNR | {n} SWD" for n in names) + " |"
    lines = [head, "|---" * (1 + 2 * len(names)) + "|"]
    for r in rows:
        cells = []
        for n in names:
            v = results["photos"][n]["rows"][r]
            cells += [f"{v['psnr']:.2f}", f"{v['swd']:.1f}"]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
