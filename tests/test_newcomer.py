"""A newcomer's first hour (issue 27): the progress line at 80 columns, one numbering in every message,
commands that can be run twice, what the run says while it waits, and files that follow the umask."""
from __future__ import annotations

import io
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import consingan
from consingan.callbacks import Callbacks
from conftest import ROOT, TINY, TINY_FLAGS, run_cli

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>])")


def screen_lines(raw: str) -> list[str]:
    """The lines a terminal showed, escape sequences removed (each redraw is a line of its own)."""
    text = ANSI.sub("", raw)
    return [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]


# --- 1. the progress line at 80 columns ---------------------------------------------------------

def test_bar_line_fits_80_columns_and_the_losses_have_their_own_line():
    from rich.console import Console

    from consingan.progress import RichProgress

    buf = io.StringIO()
    bar = RichProgress(console=Console(width=80, force_terminal=True, file=buf))
    bar.start_stage(5, 6, 2000, 0)
    many = {f"loss_{i}": -0.123456 * i for i in range(12)}  # far wider than 80 columns
    bar.update(1234, many)
    bar.close()
    lines = screen_lines(buf.getvalue())
    assert all(len(line) <= 80 for line in lines), lines
    head = [line for line in lines if line.startswith("stage 6/6")]
    assert head and "1234/2000" in head[-1] and "left" in head[-1], lines
    assert any(line.startswith("losses at iteration 1234: loss_0=") for line in lines), lines


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_training_in_an_80_column_terminal_shows_stage_count_and_time_left(tiny_image, tmp_path):
    """The command itself, its stdout a pseudo-terminal of 80x24 (progress auto: the bar)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERM")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
    flags = [f for f in TINY_FLAGS if f not in ("--progress", "plain")]
    proc = subprocess.Popen([sys.executable, "main_train.py", "--input_name", str(tiny_image), "--out_dir",
                             str(tmp_path / "run"), *flags],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=300)
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.returncode == 0, raw
    lines = screen_lines(raw)
    bars = [line for line in lines if re.match(r"stage \d/3 ", line)]
    assert all(len(line) <= 80 for line in bars), bars
    last = [line for line in bars if line.startswith("stage 3/3")][-1]
    assert re.search(r"stage 3/3 .*\b20/20\b.* left ", last), last


# --- 2. one numbering -------------------------------------------------------------------------------

class StopAt(Callbacks):
    """Sets ``event`` after ``iteration`` iterations of stage index ``stage`` (the run stops after the next one)."""

    def __init__(self, stage: int, iteration: int, event: threading.Event):
        self.at, self.event = (stage, iteration), event

    def on_iteration(self, stage, iteration, logged):
        if (stage, iteration) == self.at:
            self.event.set()


def test_the_messages_of_an_interrupted_run_agree(tiny_image, tmp_path):
    """Stopped in the second stage (folder 1) after 6 of its 20 iterations: the plain line, the bar,
    the error, the checkpoint, the web status and the batch table say the same stage and iteration."""
    pytest.importorskip("gradio")
    from rich.console import Console

    from consingan.core.engine import TrainingStopped
    from consingan.progress import PlainProgress, RichProgress
    from consingan.webapp import jobs as jobs_mod
    from consingan.webapp.ui import job_markdown

    stop = threading.Event()
    plain, rich_out = io.StringIO(), io.StringIO()
    rich = RichProgress(console=Console(width=80, force_terminal=True, file=rich_out))
    job = jobs_mod.Job(1, "train", "tiny", tmp_path / "run", run=lambda job: None, state=jobs_mod.RUNNING)
    job.started = 0.0
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stopped:
        consingan.train(consingan.read_image(tiny_image), out_dir=out, device="cpu", progress=PlainProgress(plain),
                        callbacks=[rich, jobs_mod.JobCallbacks(job), StopAt(1, 5, stop)], stop=stop, **TINY)
    rich.close()
    message = str(stopped.value)
    assert message == "interrupted at stage 2/3 (folder 1), iteration 6/20"
    assert plain.getvalue().splitlines()[-1].startswith("stage 2/3, iteration 6/20, ")
    assert [line for line in screen_lines(rich_out.getvalue()) if line.startswith("stage 2/3")][-1].split()[-4] == "6/20"
    record = torch.load(out / "checkpoint.pt", weights_only=True)["train"]
    assert (record["stage"], record["iteration"]) == (1, 6) and (out / "1" / "real.png").exists()
    status = job_markdown(None, job.snapshot())
    assert "stage 2/3, iteration 6/20," in status
    job.state, job.message = jobs_mod.STOPPED, message
    assert message in job_markdown(None, job.snapshot())


def test_the_cli_error_and_resume_hint_use_the_same_numbers(tiny_image, tmp_path, monkeypatch):
    from consingan.core import engine as engine_mod

    original = engine_mod.Engine._run_stage

    def stop_in_stage_3(self):
        if self.stage == 2:
            self.stop()  # as Ctrl-C would: the stage stops after its first iteration
        return original(self)

    monkeypatch.setattr(engine_mod.Engine, "_run_stage", stop_in_stage_3)
    out = tmp_path / "run"
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", out, *TINY_FLAGS, check=False)
    assert proc.returncode == 130, proc.stderr
    assert "error: interrupted at stage 3/3 (folder 2), iteration 1/20" in proc.stderr
    assert f"Resume with: python main_train.py --resume {out}" in proc.stderr
    assert "stage 3/3: 20 iterations" in proc.stdout


# --- 3. commands run twice --------------------------------------------------------------------------

def test_second_train_into_the_same_out_dir_says_which_flag_to_pass(tiny_image, tmp_path):
    out = tmp_path / "quickstart"
    run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", out, *TINY_FLAGS)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", out, *TINY_FLAGS, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --out_dir {out} already exists and holds a trained model; to train again, pass another --out_dir "
        f"({out}_1 is free), or use this one: python main_generate.py --model_dir {out} (nothing was overwritten)"]
    assert "Device:" not in proc.stdout  # refused before any work
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before and not (tmp_path / "quickstart_1").exists()


def test_second_generate_writes_numbered_samples_and_says_so(tiny_image, tmp_path):
    out = tmp_path / "m"
    run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", out, *TINY_FLAGS)
    first = run_cli("main_generate.py", "--model_dir", out, "--num_samples", "2", "--seed", "1")
    second = run_cli("main_generate.py", "--model_dir", out, "--num_samples", "3", "--seed", "2")
    samples = out / "Evaluation" / "random_samples"
    assert first.stdout.strip().splitlines()[-1] == f"Samples saved to: {samples}"
    assert f"{samples} already holds samples, so these went to random_samples_1 beside it" in second.stdout
    assert second.stdout.strip().splitlines()[-1] == f"Samples saved to: {samples}_1"
    assert len(list(samples.glob("*.png"))) == 2 and len(list(Path(f"{samples}_1").glob("*.png"))) == 3
    # a task's default folder (here --paint's Evaluation/<painting stem>/) likewise
    for _ in range(2):
        painted = run_cli("main_generate.py", "--model_dir", out, "--paint", tiny_image, "--num_samples", "1")
    folder = out / "Evaluation" / tiny_image.stem
    assert f"{folder} already holds results, so this run writes to {tiny_image.stem}_1 beside it" in painted.stdout
    assert (folder / "painted_0.png").is_file() and Path(f"{folder}_1", "painted_0.png").is_file()


def readme_quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return " ".join(line.strip() for line in block.strip().splitlines() if not line.lstrip().startswith("#"))


def test_the_readme_quick_start_runs_twice(tiny_image, tmp_path):
    """The README's quick-start command, with TINY settings for the preset, a tiny image and the model
    folder under tmp_path, run twice by a shell: the second run keeps the model and adds samples."""
    command = readme_quick_start()
    install, _, rest = command.partition(" && ")
    assert install.startswith("pip install")
    out = tmp_path / "quickstart"
    rest = (rest.replace("--preset quick --manualSeed 1", " ".join(TINY_FLAGS))
            .replace("Images/Generation/rocket.png", shlex.quote(str(tiny_image)))
            .replace("TrainedModels/rocket/quickstart", shlex.quote(str(out)))
            .replace("python ", f"{shlex.quote(sys.executable)} "))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run(["bash", "-c", rest], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    assert "Model saved to:" in runs[0].stdout and "Model saved to:" not in runs[1].stdout
    assert runs[1].stdout.strip().splitlines()[-1] == f"Samples saved to: {out}/Evaluation/random_samples_1"
    assert len(list((out / "Evaluation" / "random_samples_1").glob("*.png"))) == 50


# --- 5. what a run says --------------------------------------------------------------------------------

def test_the_device_line_names_the_precision_and_the_threads(tiny_image, tmp_path):
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", tmp_path / "a", *TINY_FLAGS,
                   "--train_stages", "2", "--niter", "2", "--precision", "fp32", "--threads", "1")
    assert "Device: cpu, computing in fp32 with 1 thread" in proc.stdout.splitlines()
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", tmp_path / "b", *TINY_FLAGS,
                   "--train_stages", "2", "--niter", "2", "--precision", "auto")
    import json

    chosen = json.loads((tmp_path / "b" / "config.json").read_text())["precision"]
    threads = json.loads((tmp_path / "b" / "config.json").read_text())["threads"]
    line = f"Device: cpu, computing in {chosen} with {threads} thread{'s' if threads > 1 else ''}"
    assert chosen in ("fp32", "bf16") and line in proc.stdout.splitlines()


def test_the_batch_says_that_ray_is_starting(tiny_image, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from consingan import batch

    class Started(Exception):
        pass

    def start_ray(**kw):
        print("<ray.init>")
        raise Started

    monkeypatch.setattr(batch, "start_ray", start_ray)
    with pytest.raises(Started):
        batch.run([str(tiny_image)], tmp_path / "runs", progress="plain", **TINY)
    out = capsys.readouterr().out
    assert "starting Ray" in out and out.index("starting Ray") < out.index("<ray.init>")


# --- 7. file modes follow the umask ---------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tiny_image, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "m"
        run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", out, *TINY_FLAGS,
                "--train_stages", "2", "--niter", "2")
        run_cli("main_generate.py", "--model_dir", out, "--num_samples", "2", "--seed", "0")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    dirs = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert {"model.pt", "config.json", "log.jsonl", "gen_sample_0.png", "samples_grid.png"} <= {p.name for p in files}
    assert {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
            if stat.S_IMODE(p.stat().st_mode) != file_mode} == {}
    assert {p.as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs
            if stat.S_IMODE(p.stat().st_mode) != dir_mode} == {}


# --- 6. the web app's model lists (the browser test checks the page itself) --------------------------

def test_each_tab_prefers_the_modes_it_suits_and_selects_a_model_trained_in_the_page():
    from consingan.webapp.choices import choose

    modes = {"paint_new": "paint", "gen": "generation", "harm": "harmonization", "sr": "superres", "anim": "animation"}
    names = list(modes)  # newest first: a paint model is the newest
    pick = lambda tab, **kw: choose(tab, names, modes.get, **kw)  # noqa: E731
    assert pick("animation").value == "anim" and pick("explore").value == "gen" and pick("samples").value == "gen"
    assert pick("paint").value == "paint_new" and pick("superres").names == ["sr"]
    assert pick("harmonize").names == ["harm"] and pick("explore").names[:2] == ["gen", "anim"]
    # the user's pick stays while it exists; a model just trained takes over where it fits
    assert pick("explore", current="paint_new").value == "paint_new"
    assert pick("explore", current="gone").value == "gen"
    assert pick("explore", current="anim", trained="gen").value == "gen"
    assert pick("harmonize", current="harm", trained="gen").value == "harm"
    assert choose("explore", [], modes.get).value is None


def test_the_model_table_shows_the_training_size(tiny_image, tmp_path):
    from consingan.webapp.choices import training_size

    out = tmp_path / "m"
    consingan.train(consingan.read_image(tiny_image), out_dir=out, device="cpu", **{**TINY, "niter": 2, "max_size": 40})
    model = consingan.load(out)
    h, w = model.shapes[-1]
    assert training_size(out) == (w, h) == (40, 27)  # the 45x30 upload under max_size 40
    for real in out.glob("*/real.png"):
        real.unlink()
    assert training_size(out) == (40, 27)  # from the model file
