"""Paint-to-image with a generation model and with a ``paint`` model (docs/method.md 5).

For each training image, both models are trained with the same settings. Paintings are made from
the paint model's palette: the stage-0 training image quantised to it ("quantised"), its left and
right halves swapped ("halves swapped"), and a rectangle of the palette colour least present in the
image's centre painted there ("rectangle added"). Each painting is enlarged to the training size with
nearest-neighbour (flat colours, as a user paints) and fed to both models, 4 samples each. Reported:

* colour error: RMS difference between the output and the painting, both resized to the stage-0
  size, in [-1, 1] units (0: the output's coarse colours are the painting's);
* SWD: patch SWD of the outputs against the training image (consingan.metrics, x1e3; lower: the
  output's patches look more like the training image's). The painting itself is the reference row.

    python benchmarks/paint.py --out benchmarks/results/paint        # about 10 min on 1 busy core
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGES = ("Images/Generation/rocket.png", "Images/Generation/coffee.png")


def paintings(q0: torch.Tensor, palette: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The test layouts from the quantised stage-0 image ``q0``, enlarged to ``size`` (nearest)."""
    h, w = q0.shape[-2:]
    swapped = torch.cat([q0[..., w - w // 2:], q0[..., : w - w // 2]], dim=-1)
    added = q0.clone()
    top, left, rh, rw = h // 3, w // 3, h // 3, w // 3
    centre = q0[..., top:top + rh, left:left + rw].permute(0, 2, 3, 1).reshape(-1, 3)
    counts = torch.stack([(centre == c).all(dim=1).sum() for c in palette])
    added[..., top:top + rh, left:left + rw] = palette[int(counts.argmin())].view(1, 3, 1, 1)
    layouts = {"quantised": q0, "halves swapped": swapped, "rectangle added": added}
    return {k: F.interpolate(v, size=size, mode="nearest") for k, v in layouts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/paint")
    p.add_argument("--images", default=",".join(IMAGES))
    p.add_argument("--max_size", type=int, default=64)
    p.add_argument("--train_stages", type=int, default=4)
    p.add_argument("--niter", type=int, default=200)
    p.add_argument("--nfc", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="/tmp/consingan_paint_models", help="where the trained models go")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from consingan import api
    from consingan.core.image import grid
    from consingan.metrics import swd
    from consingan.storage.image_files import save_image
    from consingan.tasks import paint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(train_stages=args.train_stages, niter=args.niter, nfc=args.nfc, max_size=args.max_size,
                    manualSeed=args.seed, precision="fp32")
    results = {"settings": {**settings, "samples": args.samples, "threads": args.threads,
                            "torch": torch.__version__}, "images": {}}
    for path in args.images.split(","):
        name = Path(path).stem
        image = api.read_image(path)
        models, seconds = {}, {}
        for mode in ("generation", "paint"):
            t0 = time.time()
            models[mode] = api.train(image, api.make_config(mode, **settings),
                                     out_dir=Path(args.models) / f"{name}_{mode}_{time.strftime('%H%M%S')}")
            seconds[mode] = round(time.time() - t0, 1)
        pm = models["paint"]
        palette = paint.model_palette(pm)
        q0 = paint.quantise(pm.reals()[0], palette)
        size0 = tuple(pm.shapes[0])
        real = pm.real
        rows: dict[str, dict] = {}
        pictures = []
        for layout, painting in paintings(q0, palette, tuple(real.shape[-2:])).items():
            rows[f"{layout}: painting itself"] = {"colour_error": 0.0, "swd": swd(painting, real, seed=0)}
            row_pics = [painting]
            for mode, model in models.items():
                images = model.paint(painting, num_samples=args.samples, seed=args.seed)
                err = sum(paint.colour_error(im[None], painting, size0) for im in images) / len(images)
                rows[f"{layout}: {mode} model"] = {"colour_error": err, "swd": swd(images, real, seed=0)}
                row_pics.append(images[:1])
            pictures.append(torch.cat(row_pics))
        results["images"][name] = {"size": list(real.shape[-2:]), "stage0": list(size0),
                                   "palette": palette.tolist(), "train_seconds": seconds, "rows": rows}
        # rows: layouts; columns: painting | generation model | paint model
        save_image(grid(torch.cat(pictures), columns=3), out / f"pairs_{name}.png")
        print(name, json.dumps(results["images"][name], indent=1), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    names = list(results["images"])
    rows = list(next(iter(results["images"].values()))["rows"])
    lines = ["| layout: input | " + " | ".join(f"{n} colour error | {n} SWD" for n in names) + " |",
             "|---" * (1 + 2 * len(names)) + "|"]
    for r in rows:
        cells = []
        for n in names:
            v = results["images"][n]["rows"][r]
            cells += [f"{v['colour_error']:.3f}", f"{v['swd']:.1f}"]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
