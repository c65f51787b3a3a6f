"""Property-based tests of the surfaces that take hostile input (issue 26, section 8), each bounded to a
few seconds: names (folder names, model names, default output folders), batch manifests and image
lists, training-state records of a checkpoint, and names and uploads against the web app's HTTP API.
The regression tests of each class are in test_safe_edges.py."""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import signal
import string
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

import consingan
from conftest import TINY
from consingan import api, batch
from consingan.errors import UserError
from consingan.storage.paths import MAX_NAME_CHARS, is_inside, safe_name

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)

# Text that hostile names are made of: dots, separators, spaces, control characters, non-ASCII.
NAME_CHARS = st.sampled_from(list(".../\\ \t\n\0_-~:*?\"<>|") + list("aZ9éß漢") + ["\u202e", "\ufeff"])
names = st.one_of(st.text(NAME_CHARS, max_size=12), st.sampled_from(["..", "...", ".", "", "../x", "/etc", ".x",
                                                                      "x" * 300, " .. ", "a/../../b"]))


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise AssertionError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- names ----------------------------------------------------------------------------------------------

@FAST
@given(text=names)
def test_safe_name_gives_one_visible_folder_inside_any_root(tmp_path_factory, text):
    root = tmp_path_factory.getbasetemp() / "root"
    name = safe_name(text)
    assert name and len(name) <= MAX_NAME_CHARS and name == name.strip(" ")
    assert not name.startswith(".") and not set(name) & set("/\\\0\n\t")
    assert (root / name).parent == root and is_inside(root, root / name)
    assert safe_name(name) == name  # already safe: unchanged


@FAST
@given(stem=names, suffix=st.sampled_from([".png", ".jpg", "", ".PNG"]))
def test_default_output_folder_stays_in_its_root(tmp_path_factory, stem, suffix):
    root = tmp_path_factory.getbasetemp() / "models"
    out = api.default_out_dir(stem + suffix, consingan.make_config(**TINY), root=root)
    assert is_inside(root, out) and out.parent.parent == root, out


@FAST
@given(name=names)
def test_model_names_never_lead_out_of_the_models_folder(tmp_path_factory, name):
    from consingan.webapp.store import ModelStore

    base = tmp_path_factory.getbasetemp()
    root = base / "store" / "models"
    (root / "m").mkdir(parents=True, exist_ok=True)
    (root / "m" / "model.pt").write_bytes(b"x")
    link = root / "out"
    if not link.is_symlink():
        link.symlink_to(base)
    store = ModelStore(root)
    try:
        folder = store.folder(name)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert is_inside(root, folder), folder


# --- batch manifests and image lists ----------------------------------------------------------------------

cells = st.one_of(names, st.sampled_from(["a.png", "b.png", "missing.png", "loop", "20", "-1", "1e9", "x,y", '"']),
                  st.text(max_size=6))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in ("a.png", "b.png", ".hidden.png", "...png"):
        Image.new("RGB", (20, 20)).save(folder / name, format="PNG")
    (folder / "loop").symlink_to(folder / "loop")
    return folder


@SLOW
@given(header=st.lists(st.sampled_from(["image", "name", "niter", "max_size", "bogus", ""]), min_size=1, max_size=4),
       rows=st.lists(st.lists(cells, max_size=5), max_size=6))
def test_manifests_give_jobs_or_one_line(image_folder, header, rows):
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    manifest = image_folder / "m.csv"
    manifest.write_text(buf.getvalue(), encoding="utf-8")
    check_jobs(manifest, image_folder)


@SLOW
@given(lines=st.lists(st.one_of(cells, st.binary(max_size=8).map(lambda b: b.decode("latin-1"))), max_size=8),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
@example(lines=["\xe9.png"], encoding="latin-1")
@example(lines=["loop"], encoding="utf-8")
def test_image_lists_give_jobs_or_one_line(image_folder, lines, encoding):
    listing = image_folder / "list.txt"
    listing.write_bytes("\n".join(lines).encode(encoding, errors="replace"))
    check_jobs(listing, image_folder)


def check_jobs(source: Path, folder: Path) -> None:
    with within(20):
        try:
            jobs = batch.collect_jobs(source)
            batch.check_settings(jobs)
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc), exc
            return
    seen = set()
    for job in jobs:
        assert job.name == safe_name(job.name) and job.name.lower() not in seen, job.name
        seen.add(job.name.lower())
        assert is_inside(folder / "runs", batch.job_dir(folder / "runs", job.name))


# --- training-state records ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(run folder, its checkpoint record): a run stopped in the middle of stage 1."""
    from test_safe_edges import StopAt, tiny_tensor

    from consingan.core.engine import TrainingStopped

    out = tmp_path_factory.mktemp("state") / "run"
    with pytest.raises(TrainingStopped):
        api.train(tiny_tensor(), device="cpu", out_dir=out, callbacks=[StopAt(1, 3)], **{**TINY, "niter": 6})
    return out, torch.load(out / "checkpoint.pt", weights_only=True)


def leaves(value, path=()):
    """(path, value) of every part of a training state: tables, lists and the plain values in them."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))


def hostile_for(value, key=None):
    """Values that cannot stand where ``value`` stood (a different kind, or a tensor of another shape or dtype)."""
    common = [None, "x", [], {}, float("nan")]
    if isinstance(value, bool) or value is None:
        return ["x", 1.5, [], {}, torch.zeros(1)] + ([] if value is None else [None])
    if isinstance(value, int):
        return common + [1.5, True, float("inf")] + ([-1] if key in ("stage", "iteration") else [])
    if isinstance(value, float):
        return common + [True, float("inf"), "1.0"]
    if isinstance(value, torch.Tensor):
        return [None, 1, "x", torch.zeros(2, 3, 5), value.to(torch.float64) if value.dtype != torch.float64
                else value.float(), value.flatten()[:0]]
    if isinstance(value, str):
        return [None, 1, [], "other"]
    return [None, "x", 1, [] if isinstance(value, dict) else {}]


def mutable_paths(state):
    out = []
    for path, value in leaves(state):
        if not path or path[-1] in ("foreach", "fused", "differentiable", "capturable", "maximize", "amsgrad",
                                    "decoupled_weight_decay", "_is_initial", "_get_lr_called_within_step"):
            continue  # flags whose every true/false/None value is valid
        if path[-1] == "device" and path[:1] == ("rng",) and value is None:
            continue  # a CPU run's missing device generator: any device state is ignored on the CPU
        out.append(path)
    return out


def set_at(state, path, value):
    for key in path[:-1]:
        state = state[key]
    if isinstance(state, tuple):
        raise TypeError
    state[path[-1]] = value


@st.composite
def mutations(draw, state):
    path = draw(st.sampled_from(mutable_paths(state)))
    value = state
    for key in path:
        value = value[key]
    return path, draw(st.sampled_from(hostile_for(value, path[-1])))


def test_every_field_of_a_training_state_is_reached(checkpoint):
    paths = mutable_paths(checkpoint[1]["train"])
    assert ("stage",) in paths and ("rng", "cpu") in paths and ("train_seconds",) in paths
    assert any(p[:2] == ("opt_g", "state") and p[-1] == "exp_avg" for p in paths)
    assert any(p[:1] == ("sched_d",) for p in paths)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(data=st.data())
def test_every_mutation_of_a_training_state_ends_in_one_line(checkpoint, tmp_path_factory, data):
    src, record = checkpoint
    state = torch.load(src / "checkpoint.pt", weights_only=True)["train"]
    path, value = data.draw(mutations(state))
    try:
        set_at(state, path, value)
    except TypeError:  # inside a tuple (betas): replace the tuple
        set_at(state, path[:-1], value)
    run = tmp_path_factory.mktemp("mut") / "run"
    shutil.copytree(src, run)
    torch.save({**record, "train": state}, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    with within(60):
        with pytest.raises(UserError) as err:
            api.resume(run, device="cpu")
    assert "\n" not in str(err.value) and str(err.value), err.value
    assert (run / "checkpoint.pt").read_bytes() == before and not (run / "model.pt").exists(), (path, value)


# --- the web app's HTTP API: names and uploads -----------------------------------------------------------

@pytest.fixture(scope="module")
def web(tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    from test_app import start_server, stop_server

    base = tmp_path_factory.mktemp("web")
    root = base / "root"
    models, cwd = root / "models", base / "cwd"
    models.mkdir(parents=True), cwd.mkdir()
    (models / "away").symlink_to(base)  # a link out of the root, as a model name's first part
    proc, url, log = start_server(models, cwd)
    client = None
    try:
        client = Client(url, verbose=False, download_files=str(base / "downloads"), analytics_enabled=False)
        yield {"client": client, "root": root, "models": models, "cwd": cwd, "base": base, "log": log}
    finally:
        if client is not None:
            client.close()
        stop_server(proc)


def outside_files(web) -> list[Path]:
    """Files the app wrote outside its models folder (its working folder and the folder above it)."""
    found = [p for p in web["root"].iterdir() if p.name != "models"]
    return found + list(web["cwd"].rglob("*"))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(name=names)
@example(name="away/x")
@example(name="away")
def test_model_names_over_http_stay_in_the_root(web, name):
    from gradio_client.exceptions import AppError

    try:
        web["client"].predict(name, 1, 0, 1.0, 1.0, 0, api_name="/sample")
    except AppError as exc:
        assert "\n" not in str(exc).strip(), exc
    assert outside_files(web) == []


upload_names = st.text(st.sampled_from(list(". _-aé")), max_size=6).filter(lambda s: s not in ("", ".", ".."))


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(stem=upload_names)
@example(stem="..")
@example(stem="...")
def test_uploads_with_crafted_names_train_inside_the_root(web, tmp_path_factory, stem):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    folder = tmp_path_factory.mktemp("upload")
    path = folder / f"{stem}.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 45, 3)) * 255).astype(np.uint8)).save(path, format="PNG")
    c = web["client"]
    settings_ = ["45", "2", "2", "4", "25", "1", "", ""]
    try:
        job, _ = c.predict(handle_file(str(path)), None, "generation", "fast", *settings_, api_name="/train")
    except AppError as exc:
        assert "\n" not in str(exc).strip(), exc
    else:
        done = c.predict(int(job), 120, "end", api_name="/wait_job")
        assert done["state"] in ("done", "failed", "stopped"), done
        assert is_inside(web["models"], done["out_dir"]), done
    assert outside_files(web) == []


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(kind=st.sampled_from(["bomb", "text", "empty", "truncated"]))
def test_hostile_uploads_to_the_train_tab_are_the_apps_one_line(web, tmp_path_factory, kind):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from test_safe_edges import forged_png

    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "photo.png"
    if kind == "bomb":
        forged_png(path, 20000, 20000)
    elif kind == "text":
        path.write_text("just text")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        Image.new("RGB", (30, 30)).save(path)
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AppError) as err:
        web["client"].predict(handle_file(str(path)), None, "generation", "fast", "45", "2", "2", "4", "25", "1", "",
                              "", api_name="/train")
    text = str(err.value).strip()
    assert "\n" not in text and "preprocess" not in text.lower(), text
    assert ("MAX_IMAGE_PIXELS" in text) if kind == "bomb" else ("training image" in text), text
