"""The web app (python -m consingan app) driven through its HTTP API with gradio_client, as a browser
would: a server in a subprocess on a free loopback port, tiny models (30x45 pixels, nfc 4, 2 stages).
Skipped without the [app] extra."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The Train tab's settings (text fields; blank: the default)
TINY = {"mx": "45", "stages": "2", "niter": "8", "nfc": "4", "mn": "25", "seed": "1", "sr": "", "colors": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, cwd: Path, host: str = "127.0.0.1"):
    """(process, url, log lines): the app on a free port, once it says it listens."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}  # tiny models: a second thread buys nothing, and on a busy machine it costs a lot
    proc = subprocess.Popen([sys.executable, "-m", "consingan", "app", "--models_root", str(models), "--host", host,
                             "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "ConSinGAN app: models in" in line:  # said once the server answers
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("the app did not start:\n" + "".join(lines))
    return proc, f"http://127.0.0.1:{port}/", lines


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(20)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    models, cwd = base / "models", base / "cwd"
    cwd.mkdir()
    rng = np.random.default_rng(0)
    image = (rng.random((30, 45, 3)) * 255).astype(np.uint8)
    image[:15] //= 2  # some structure: a darker top half
    Image.fromarray(image).save(base / "tiny.png")
    proc, url, log = start_server(models, cwd)
    client = None
    try:
        client = Client(url, verbose=False, download_files=str(base / "downloads"), analytics_enabled=False)
        yield {"client": client, "models": models, "base": base, "cwd": cwd, "log": log}
    finally:
        if client is not None:
            client.close()  # its open stream would hold up the server's shutdown
        stop_server(proc)


def train(app, mode: str, **settings) -> dict:
    c = app["client"]
    values = {**TINY, **settings}
    job, status = c.predict(handle_file(str(app["base"] / "tiny.png")), None, mode, "fast", *values.values(),
                            api_name="/train")
    assert f"Job {int(job)}" in status
    return c.predict(int(job), 120, "end", api_name="/wait_job")


def model_named(app, mode: str) -> str:
    names = [n for n in app["client"].predict(api_name="/models") if f"_{mode}_" in n]
    assert names, app["client"].predict(api_name="/models")
    return names[0]


@pytest.mark.slow
def test_train_sample_and_refuse_escaping_names(app):
    c, models = app["client"], app["models"]
    done = train(app, "generation")
    assert done["state"] == "done", done
    assert (done["stage"], done["num_stages"], done["iteration"]) == (1, 2, 8)
    name = model_named(app, "generation")
    folder = models / name
    assert folder.parent.name == "tiny" and (folder / "model.pt").is_file()
    info = json.loads((folder / "config.json").read_text())
    assert (info["nfc"], info["train_stages"], info["manualSeed"]) == (4, 2, 1)

    gallery, archive, where = c.predict(name, 5, 3, 1.0, 1.5, 0, api_name="/sample")
    assert len(gallery) == 5
    written = sorted((folder / "Web").glob("samples_*/random_samples_scale_h_1_scale_w_1.5/gen_sample_*.png"))
    assert len(written) == 5
    assert Image.open(written[0]).size == (int(45 * 1.5), 30)  # (width, height): the width scaled
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted(p.name for p in written)
    shown = np.asarray(Image.open(gallery[0]["image"]))
    assert np.array_equal(shown, np.asarray(Image.open(written[0]).convert("RGB")))

    for bad in ("../x", "../../etc", "/etc", "tiny/../../x"):
        with pytest.raises(AppError, match="leaves the models folder|leads outside"):
            c.predict(bad, 2, 0, 1.0, 1.0, 0, api_name="/sample")
    with pytest.raises(AppError, match="holds no model.pt"):
        c.predict("tiny", 2, 0, 1.0, 1.0, 0, api_name="/sample")
    with pytest.raises(AppError, match="start scale must be a whole number from 0 to 2"):
        c.predict(name, 2, 0, 1.0, 1.0, 7, api_name="/sample")
    assert not (models.parent / "x").exists()

    image, pad = c.predict(name, 1.0, -0.5, 0, 1, api_name="/explore")
    assert np.asarray(Image.open(image)).shape == (256, 384, 3)  # 30x45 shown enlarged to 384 px
    gif = c.predict(name, 1, 0.1, 0.9, 6, 10, 0, "gif", api_name="/animate")[2]
    assert Image.open(gif).n_frames == 6
    assert len(list((folder / "Web").glob("animation_*/*.gif"))) == 1


@pytest.mark.slow
def test_explore_moves_one_sample_smoothly(app):
    """Explore's noise: unit variance wherever the point is, the layout stages fixed, nearby points
    nearby images, a preview one stage below the top."""
    import torch

    import consingan
    from consingan.webapp.explore import point_noise, render

    model = consingan.load(app["models"] / model_named(app, "generation"))
    noise = point_noise(model, 2.0, -1.5, seed=3, start_scale=1)
    assert torch.equal(noise[0], model.fixed[0])  # below the start scale: the fixed noise
    z, far = point_noise(model, 0.0, 0.0, 3, 1), point_noise(model, 30.0, 0.0, 3, 1)
    assert not torch.equal(noise[1], z[1]) and abs(float(far[1].std()) - 1) < 0.2
    base = render(model, 0.0, 0.0, 3, 1)
    near, away = render(model, 0.05, 0.0, 3, 1), render(model, 2.0, 0.0, 3, 1)
    assert tuple(base.shape[-2:]) == tuple(model.shapes[-1])
    assert 0 < float((near - base).abs().mean()) < float((away - base).abs().mean())
    assert torch.equal(render(model, 0.0, 0.0, 3, 1), base)  # the same point, the same image
    preview = render(model, 0.05, 0.0, 3, 0, preview=True)
    assert tuple(preview.shape[-2:]) == tuple(model.shapes[-2])


@pytest.mark.slow
def test_harmonize_with_a_drawn_mask(app):
    c, base, models = app["client"], app["base"], app["models"]
    assert train(app, "harmonization")["state"] == "done"
    name = model_named(app, "harmonization")
    naive = np.asarray(Image.open(base / "tiny.png")).copy()
    naive[10:20, 15:30] = (250, 30, 30)
    Image.fromarray(naive).save(base / "naive.png")
    layer = np.zeros((30, 45, 4), np.uint8)
    layer[10:20, 15:30] = (255, 0, 0, 255)  # the brush stroke over the pasted object
    Image.fromarray(layer).save(base / "layer.png")
    editor = {"background": handle_file(str(base / "naive.png")), "layers": [handle_file(str(base / "layer.png"))],
              "composite": handle_file(str(base / "naive.png"))}
    raw, blended, where = c.predict(name, "draw the mask", None, 0.5, 0.5, 1.0, editor, 0, api_name="/harmonize")
    out = next((models / name / "Web").glob("harmonize_*"))
    assert sorted(p.name for p in out.iterdir()) == ["harmonized_w_mask.png", "harmonized_wo_mask.png", "naive.png",
                                                     "naive_mask.png"]
    mask = np.asarray(Image.open(out / "naive_mask.png").convert("L")) > 127
    assert mask.sum() == 150 and mask[10:20, 15:30].all()
    assert np.array_equal(np.asarray(Image.open(out / "naive.png").convert("RGB")), naive)
    blended_px = np.asarray(Image.open(blended).convert("RGB")).astype(int)
    raw_px = np.asarray(Image.open(raw).convert("RGB")).astype(int)
    assert raw_px.shape == blended_px.shape == (30, 45, 3)
    # far from the mask the blend keeps the training image, so blended and raw differ there
    assert np.abs(blended_px - raw_px).sum() > 0

    with pytest.raises(AppError, match="the mask is empty"):
        c.predict(name, "draw the mask", None, 0.5, 0.5, 1.0, {**editor, "layers": []}, 0, api_name="/harmonize")
    generation = model_named(app, "generation") if any("_generation_" in n for n in c.predict(api_name="/models")) \
        else None
    if generation:
        with pytest.raises(AppError, match="harmonization or editing models only"):
            c.predict(generation, "draw the mask", None, 0.5, 0.5, 1.0, editor, 0, api_name="/harmonize")


@pytest.mark.slow
def test_paint_from_the_models_colours(app):
    c, models = app["client"], app["models"]
    assert train(app, "paint", colors="4")["state"] == "done"
    name = model_named(app, "paint")
    assert json.loads((models / name / "config.json").read_text())["paint_colors"] == 4
    update, swatch = c.predict(name, api_name="/paint_canvas")
    colours = update["brush"]["colors"]
    assert 1 <= len(colours) <= 4 and all(h.startswith("#") and len(h) == 7 for h in colours)
    canvas = np.asarray(Image.open(update["value"]["background"]).convert("RGB"))
    assert canvas.shape == (30, 45, 3)
    used = {"#%02x%02x%02x" % tuple(p) for p in canvas.reshape(-1, 3)}
    assert used <= set(colours)  # the canvas is the stage-0 image in the palette's colours
    painted = canvas.copy()
    painted[:, :20] = [int(colours[-1][i:i + 2], 16) for i in (1, 3, 5)]
    Image.fromarray(painted).save(app["base"] / "painting.png")
    value = {"background": handle_file(str(app["base"] / "painting.png")), "layers": [],
             "composite": handle_file(str(app["base"] / "painting.png"))}
    gallery, where = c.predict(name, value, 3, 0, api_name="/paint")
    assert len(gallery) == 3
    out = next((models / name / "Web").glob("paint_*"))
    assert sorted(p.name for p in out.glob("painted_*.png")) == ["painted_0.png", "painted_1.png", "painted_2.png"]
    assert (out / "painting.png").is_file() and (out / "painting_stage0.png").is_file()


@pytest.mark.slow
def test_super_resolution(app):
    c, models = app["client"], app["models"]
    assert train(app, "superres", sr="2")["state"] == "done"
    name = model_named(app, "superres")
    with pytest.raises(AppError, match="factor must be a number from 1.01 to 16"):
        c.predict(name, 0.5, 0, api_name="/super_resolve")
    sr, bicubic, where = c.predict(name, 2, 0, api_name="/super_resolve")
    out = next((models / name / "Web").glob("superres_*"))
    assert sorted(p.name for p in out.iterdir()) == ["bicubic_x2.png", "sr_x2.png"]
    assert Image.open(out / "sr_x2.png").size == Image.open(out / "bicubic_x2.png").size == (90, 60)
    assert np.array_equal(np.asarray(Image.open(sr).convert("RGB")), np.asarray(Image.open(out / "sr_x2.png").convert("RGB")))


@pytest.mark.slow
def test_stop_leaves_a_resumable_checkpoint(app):
    c, base, models = app["client"], app["base"], app["models"]
    job, _ = c.predict(handle_file(str(base / "tiny.png")), None, "retarget", "fast",
                       *{**TINY, "niter": "100000"}.values(), api_name="/train")
    running = c.predict(int(job), 60, "iterating", api_name="/wait_job")
    assert running["state"] == "running"
    c.predict(int(job), api_name="/stop")
    stopped = c.predict(int(job), 60, "end", api_name="/wait_job")
    assert stopped["state"] == "stopped", stopped
    folder = Path(stopped["out_dir"])
    assert (folder / "checkpoint.pt").is_file() and not (folder / "model.pt").exists()
    assert "resume it from the Train tab" in stopped["message"]
    name = folder.relative_to(models).as_posix()
    with pytest.raises(AppError, match="leaves the models folder"):
        c.predict("../" + name, api_name="/resume")


def test_uploads_over_the_limit_are_refused(app):
    import httpx

    url = app["client"].src.rstrip("/") + "/gradio_api/upload"
    big = b"\0" * (25 * 2**20 + 1)
    r = httpx.post(url, files={"files": ("big.png", big)}, timeout=60)
    assert r.status_code == 413
    r = httpx.post(url, files={"files": ("small.png", (app["base"] / "tiny.png").read_bytes())}, timeout=60)
    assert r.status_code == 200 and "/consingan-app-" in r.json()[0]  # the app's own upload folder


def test_nothing_written_outside_the_models_root(app):
    assert list(app["cwd"].iterdir()) == []
    assert sorted(p.name for p in app["models"].iterdir()) == ["tiny"]


def test_the_command_says_how_to_install_gradio(monkeypatch):
    from typer.testing import CliRunner

    from consingan import cli

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    result = CliRunner().invoke(cli.app, ["app", "--models_root", "x"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == 'error: the web app needs Gradio: pip install -e ".[app]"'


def test_another_host_than_loopback_is_warned_about(monkeypatch, capsys):
    import consingan.webapp as webapp

    def stop_here(*args, **kwargs):
        raise SystemExit(0)

    monkeypatch.setattr(webapp, "create", stop_here)
    with pytest.raises(SystemExit):
        webapp.launch("unused", host="0.0.0.0", port=1)
    err = capsys.readouterr().err
    assert err.startswith("warning: the app listens on 0.0.0.0, so other machines can reach it")
    with pytest.raises(SystemExit):
        webapp.launch("unused", host="127.0.0.1", port=1)
    assert capsys.readouterr().err == ""


def test_model_names_are_kept_inside_the_root(tmp_path):
    from consingan.errors import UserError
    from consingan.webapp.store import ModelStore

    root, outside = tmp_path / "models", tmp_path / "elsewhere"
    (root / "a" / "run").mkdir(parents=True)
    (root / "a" / "run" / "model.pt").write_bytes(b"")
    (root / "a" / "stopped").mkdir()
    (root / "a" / "stopped" / "checkpoint.pt").write_bytes(b"")
    outside.mkdir()
    (outside / "model.pt").write_bytes(b"")
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = ModelStore(root)
    assert store.models() == ["a/run"] and store.interrupted() == ["a/stopped"]
    assert store.model_dir("a/run") == root.absolute() / "a" / "run"
    for name in ("../elsewhere", "a/../../elsewhere", str(outside), "link", "link/.", "a\\..\\..\\x"):
        with pytest.raises(UserError, match="leaves the models folder|leads outside"):
            store.model_dir(name)
    with pytest.raises(UserError, match="no model chosen"):
        store.model_dir("")


def test_handlers_show_errors_and_warnings_as_the_command_line_words_them(monkeypatch):
    """guarded: a UserError becomes gr.Error with its message, a library warning a gr.Warning, a bug a
    short line; a handler that calls another reports its warnings once."""
    import warnings

    import gradio as gr

    from consingan.errors import ConSinGANWarning, UserError
    from consingan.webapp.errors import guarded, install_warning_hook

    shown = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(message))
    install_warning_hook()  # pytest records warnings per test: the hook goes over its recorder

    @guarded
    def inner():
        warnings.warn("the naive image is 30x30 but the model was trained on 30x45", ConSinGANWarning)
        return 1

    @guarded
    def outer():
        return inner() + 1

    assert outer() == 2
    assert shown == ["the naive image is 30x30 but the model was trained on 30x45"]

    @guarded
    def refuses():
        raise UserError("--num_samples must be at least 1, not 0")

    with pytest.raises(gr.Error) as err:
        refuses()
    assert err.value.message == "--num_samples must be at least 1, not 0"

    @guarded
    def bug():
        raise KeyError("x")

    with pytest.raises(gr.Error, match="internal error: KeyError"):
        bug()


def test_startup_prints_the_apps_own_line_only(app):
    """One line with the address, said once the server answers; not Gradio's hint about share=True,
    which a user of the command cannot act on."""
    log = "".join(app["log"])
    assert "share=True" not in log and "Running on local URL" not in log
    assert sum("ConSinGAN app: models in" in line and "open http://127.0.0.1:" in line for line in app["log"]) == 1
