"""The speed benchmarks run end to end (on tiny settings: their figures are not checked here)."""
import re

import pytest

from conftest import run_cli

TINY_BENCH = ["--max_size", "40", "--set", "nfc=8", "--set", "min_size=16", "--set", "train_stages=3"]


@pytest.mark.slow
def test_bench_train_prints_both_variants_and_a_speedup():
    out = run_cli("benchmarks/bench_train.py", "--iters", "1", "--rounds", "1", *TINY_BENCH).stdout
    a = re.search(r"\(a\) straightforward: +([0-9.]+) s/iter", out)
    b = re.search(r"\(b\) consingan: +([0-9.]+) s/iter", out)
    last = out.strip().splitlines()[-1]
    assert a and b, out
    assert re.fullmatch(r"speedup [0-9.]+", last), out
    a_s, b_s, speedup = float(a.group(1)), float(b.group(1)), float(last.split()[1])
    # the times are printed to 1 ms and the speedup to 0.01: allow for that rounding, nothing more
    slack = 0.005 + (a_s / b_s) * (0.0005 / a_s + 0.0005 / b_s) * 1.01
    assert abs(speedup - a_s / b_s) <= slack, out


def test_profile_step_accounts_for_the_convolutions():
    out = run_cli("benchmarks/profile_step.py", "--iters", "1", "--by_shape", "--top", "50", *TINY_BENCH).stdout
    head, *rows = out.strip().splitlines()
    wall, in_calls = map(float, re.search(r": (\d+) ms per iteration, of which (\d+) ms", head).groups())
    assert 0 < in_calls <= wall * 1.05, head
    # the top stage's D convolutions: nfc 8 -> 8, 3x3, one line per shape
    assert any(re.search(r"aten\.convolution_backward\.default .*\(8, 8, 3, 3\)", r) for r in rows), out
    percents = [float(re.search(r"([0-9.]+)%", r).group(1)) for r in rows]
    assert percents == sorted(percents, reverse=True)


def test_results_report_links_only_the_grids_that_exist(tmp_path):
    """RESULTS.md links a sample grid only when its file is there, and leaves out the grid heading of a
    size that has none (the repository keeps only the grids that documents show)."""
    import importlib.util
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("quality", root / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    for size in ("250", "64"):
        (tmp_path / "results" / size).mkdir(parents=True)
    for name in ("rocket_paper_s1", "rocket_fast_s1"):
        shutil.copy(root / "benchmarks" / "results" / "250" / f"{name}.json", tmp_path / "results" / "250")
    shutil.copy(root / "benchmarks" / "results" / "64" / "rocket_paper_s1.json", tmp_path / "results" / "64")
    (tmp_path / "results" / "250" / "rocket_fast.png").write_bytes(b"")  # only this grid exists
    report = tmp_path / "RESULTS.md"
    quality.write_results(tmp_path / "results", report)
    text = report.read_text()
    assert "![rocket fast](results/250/rocket_fast.png)" in text
    assert "rocket_paper.png" not in text
    assert text.count("Sample grids") == 1 and text.index("Sample grids") < text.index("## 64 px")
