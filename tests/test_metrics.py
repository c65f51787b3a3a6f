"""The metrics (consingan.metrics) and the evaluate command."""
import json
import math

import pytest
import torch

import consingan
from consingan import cli, metrics as M
from conftest import TINY, run_cli


def structured(h=64, w=64, seed=0):
    """Gradients, stripes and flat blocks: patches that differ across the image at every level."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    img = torch.stack([x / w, y / h, 0.5 + 0.5 * torch.sin(x / 3.0)])
    for _ in range(8):
        r, c = torch.randint(0, h - 8, (2,), generator=g).tolist()
        img[:, r:r + 8, c:c + 8] = torch.rand(3, 1, 1, generator=g)
    return (img * 2 - 1).unsqueeze(0)


def noisy(image, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (image + sigma * torch.randn(image.shape, generator=g)).clamp(-1, 1)


def test_swd_is_zero_for_an_image_against_itself_and_grows_with_noise():
    real = structured()
    levels = M.swd_levels(real, real)
    assert len(levels) == 3  # 64, 32 and 16 px: halving stops at a 16 px short side
    assert all(v == 0.0 for v in levels)
    scores = [M.swd(noisy(real, s), real) for s in (0.03, 0.1, 0.3)]
    assert 1.0 < scores[0] < scores[1] < scores[2], scores


def test_diversity_is_zero_for_identical_samples_and_measures_the_spread():
    real = structured()
    assert M.diversity(real.expand(6, -1, -1, -1), real) == 0.0
    samples = real + 0.1 * torch.randn(20, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = 0.1 / real.std(unbiased=False).item()
    assert M.diversity(samples, real) == pytest.approx(expected, rel=0.1)


def test_nn_patch_is_zero_for_the_training_image_and_its_crops_and_grows_with_noise():
    real = structured(48, 56)
    assert M.nn_patch(real, real) == 0.0
    assert M.nn_patch(real[..., 5:30, 9:40], real) == 0.0  # memorised pieces score 0 too
    small, large = M.nn_patch(noisy(real, 0.05), real), M.nn_patch(noisy(real, 0.2), real)
    assert 0.0 < small < large


def test_rec_rmse_is_in_pixel_units():
    real = structured()
    assert M.rec_rmse(real, real) == 0.0
    assert M.rec_rmse(real + 0.1, real) == pytest.approx(0.1, rel=1e-4)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics") / "model"
    # Quality does not matter here, only a model file: 5 iterations per stage are enough.
    consingan.train(structured(30, 45), device="cpu", out_dir=out, **{**TINY, "niter": 5})
    return out


def test_evaluate_writes_finite_metrics_and_refuses_to_overwrite(tiny_model_dir, capsys):
    ev = tiny_model_dir / "ev"
    proc = run_cli("-m", "consingan", "evaluate", "--model_dir", tiny_model_dir, "--num-samples", "5",
                   "--seed", "3", "--out", ev, "--device", "cpu")
    assert proc.stdout.strip().splitlines()[-1] == f"Metrics saved to: {ev / 'metrics.json'}"
    for key in ("swd", "diversity", "rec_rmse", "nn_patch"):
        assert any(line.startswith(key) for line in proc.stdout.splitlines()), key
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("swd", "diversity", "rec_rmse", "nn_patch"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]) and metrics[key] >= 0, key
    assert metrics["num_samples"] == 5 and metrics["seed"] == 3 and metrics["evaluated_on"] == "samples"
    assert metrics["diversity"] > 0
    # Same model and seed in another process: the same numbers.
    again = M.evaluate(consingan.load(tiny_model_dir), num_samples=5, seed=3)
    assert {k: again[k] for k in ("swd", "diversity", "nn_patch")} == pytest.approx(
        {k: metrics[k] for k in ("swd", "diversity", "nn_patch")}, rel=1e-5)

    before = (ev / "metrics.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--model_dir", str(tiny_model_dir), "--out", str(ev)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ")
    assert "metrics.json" in err and "--out" in err and "Traceback" not in err
    assert (ev / "metrics.json").read_bytes() == before


def test_models_without_random_samples_are_judged_on_their_output(tiny_model_dir, tmp_path, capsys):
    model = consingan.load(tiny_model_dir)
    # Stand in for a harmonization model: same networks, only the mode decides what is judged.
    model.config = model.config.replace(train_mode="harmonization")
    on_rec = M.evaluate(model, num_samples=5)
    assert on_rec["evaluated_on"] == "reconstruction" and on_rec["num_samples"] == 1
    assert on_rec["diversity"] is None and math.isfinite(on_rec["swd"]) and math.isfinite(on_rec["nn_patch"])
    # The training image as the naive image: stage 0 gets nearly what the fixed noise holds (the naive
    # image is resized to stage 0's shape, the pyramid by the nominal factor, as the reference), so the
    # harmonized result is nearly the reconstruction.
    on_naive = M.evaluate(model, naive=model.real)
    assert on_naive["evaluated_on"] == "harmonized" and on_naive["diversity"] is None
    assert on_naive["swd"] == pytest.approx(on_rec["swd"], rel=0.01)
    assert on_naive["nn_patch"] == pytest.approx(on_rec["nn_patch"], rel=0.01)

    naive = tmp_path / "naive.png"
    consingan.save_image(model.real, naive)
    with pytest.raises(SystemExit) as exit_:  # a generation model has no naive-image result
        cli.main(["evaluate", "--model_dir", str(tiny_model_dir), "--naive_img", str(naive), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--naive_img" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_quality_benchmark_runs_both_presets_and_writes_the_table(tmp_path):
    """benchmarks/quality.py end to end on a tiny setting: records, grids, RESULTS.md; no rerun."""
    args = ["benchmarks/quality.py", "--images", "rocket", "--seeds", "1", "--max_size", "40",
            "--num_samples", "4", "--results", tmp_path / "results", "--report", tmp_path / "RESULTS.md",
            "--runs", tmp_path / "runs", "--train_args", "--niter 3 --nfc 8 --train_stages 3 --min_size 20"]
    first = run_cli(*args)
    assert "2 runs to do" in first.stdout
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results" / "40").glob("*.json")}
    assert set(records) == {"rocket_paper_s1", "rocket_fast_s1"}
    fast = records["rocket_fast_s1"]
    assert (records["rocket_paper_s1"]["iterations"], fast["iterations"]) == ([3, 3, 3], [3, 3, 3])
    assert fast["precision"] in ("bf16", "fp32")  # the preset's "auto", as this machine resolved it
    for r in records.values():
        assert all(math.isfinite(r["metrics"][k]) for k in ("swd", "diversity", "nn_patch", "rec_rmse"))
        assert r["train_minutes"] > 0
    assert (tmp_path / "results" / "40" / "rocket_fast.png").exists()
    report = (tmp_path / "RESULTS.md").read_text()
    suffix = (", bf16" if fast["precision"] == "bf16" else "") + ", Dsteps 2"  # the preset's, at 3 top stages
    assert fast["Dsteps"] == [2, 2, 2]
    assert f"| rocket | fast | 3x3{suffix} | 1 | 1 |" in report and "Fast against paper" in report
    assert "](results/40/rocket_fast.png)" in report
    again = run_cli(*args)
    assert "0 runs to do" in again.stdout
    # a preset changed by --train_args, under its own label: its own record and row, not the preset's
    labelled = [*args[:-1], args[-1] + " --precision bf16", "--presets", "paper", "--label", "paper-bf16"]
    assert "1 runs to do" in run_cli(*labelled).stdout
    record = json.loads((tmp_path / "results" / "40" / "rocket_paper-bf16_s1.json").read_text())
    assert (record["preset"], record["label"], record["precision"]) == ("paper", "paper-bf16", "bf16")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| rocket | paper-bf16 | 3x3, bf16 | 1 | 1 |" in report
    assert "averaged over 1 runs each" in report  # still paper against fast only
    # a run trained on a GPU: its metrics count, its time is shown apart and left out of the comparison
    paper = tmp_path / "results" / "40" / "rocket_paper_s1.json"
    paper.write_text(json.dumps({**json.loads(paper.read_text()), "device": "cuda", "train_minutes": 0.5}))
    run_cli("benchmarks/quality.py", "--report_only", "--results", tmp_path / "results", "--report", tmp_path / "RESULTS.md")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| rocket | paper | 3x3 | 1 | 1 | GPU 0.5 |" in report
    assert "| training time (min, CPU runs) | " in report and "| (GPU runs only) |" in report
    # fast runs on a GPU too: no CPU time on either side, and the time target is not judged
    fast_path = tmp_path / "results" / "40" / "rocket_fast_s1.json"
    fast_path.write_text(json.dumps({**json.loads(fast_path.read_text()), "device": "cuda"}))
    run_cli("benchmarks/quality.py", "--report_only", "--results", tmp_path / "results", "--report", tmp_path / "RESULTS.md")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| training time (min, CPU runs) | (GPU runs only) | (GPU runs only) |  |" in report
    assert "fast runs on a GPU" in report


def test_quality_report_spread_and_settings_text():
    """The spread lines (per-pair ratios, the standard error of their mean, the margin against it) and
    the settings column."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "quality", Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)

    def run(swd, diversity):
        return {"metrics": {"swd": swd, "diversity": diversity}}

    paper = [run(40.0, 0.30), run(40.0, 0.30)]
    # swd ratios 1.0 and 1.2: mean 1.1, standard error 0.1; the verdict (1.1) sits on the target
    close = quality.spread([run(40.0, 0.30), run(48.0, 0.30)], paper, 1.1, 1.0)
    assert "fast/paper 1.000 to 1.200, standard error of their mean 0.100" in close[0]
    assert "within it: more seeds are needed" in close[0]
    # identical ratios (no spread) and a margin: larger than the spread; diversity 1.0 is 0.1 from a bound
    clear = quality.spread([run(36.0, 0.30), run(36.0, 0.30)], paper, 0.9, 1.0)
    assert "standard error of their mean 0.000; the verdict's margin (+0.200) is larger" in clear[0]
    assert "diversity" in clear[1] and "margin (+0.100) is larger" in clear[1]
    assert quality.spread(paper[:1], paper[:1], 1.0, 1.0) == []  # one pair: no spread to speak of
    # the settings column names a changed number of D steps, and only then
    record = {"iterations": [2000] * 3 + [1390, 835, 530], "precision": "bf16", "Dsteps": 2}
    assert quality.iterations_text(record) == "2000x3, 1390x1, 835x1, 530x1, bf16, Dsteps 2"
    assert quality.iterations_text({**record, "Dsteps": 3}) == "2000x3, 1390x1, 835x1, 530x1, bf16"
    assert quality.iterations_text({**record, "Dsteps": [3] * 6}) == "2000x3, 1390x1, 835x1, 530x1, bf16"
    per_stage = {**record, "Dsteps": [3, 3, 3, 2, 2, 2]}
    assert quality.iterations_text(per_stage) == "2000x3, 1390x1, 835x1, 530x1, bf16, Dsteps 3,3,3,2,2,2"
