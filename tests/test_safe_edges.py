"""Safe edges (issue 26): paths stay in their roots, image sizes are checked before decoding, the batch
never hangs silently, crafted training state and model files are refused in one line, a full disk
inside torch.save is a full disk, and input parsing fails in one line. The property-based tests of
the same surfaces are in test_hostile_fuzz.py."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import consingan
from conftest import ROOT, TINY, run_cli
from consingan import api, batch
from consingan.core.callbacks import Callbacks
from consingan.core.engine import TrainingStopped
from consingan.errors import UserError
from consingan.storage import image_files
from consingan.storage.outputs import claim_dir
from consingan.storage.paths import MAX_NAME_CHARS, inside, is_inside, safe_name


# --- helpers ------------------------------------------------------------------------------------------

def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels, with a few bytes of pixel data (a decompression
    bomb as far as any reader that trusts the header is concerned)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def real_bomb(path: Path, side: int = 12000) -> Path:
    """A valid 1-bit PNG of side x side zeros: about 140 KB on disk, 144 megapixels decoded."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


class StopAt(Callbacks):
    def __init__(self, stage: int, iteration: int):
        self.at, self.now = (stage, iteration), (0, 0)

    def on_iteration(self, stage, iteration, logged):
        self.now = (stage, iteration)

    def should_stop(self):
        return self.now == self.at


def tiny_tensor():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((1, 3, 30, 45), dtype=np.float32)) * 2 - 1


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A run stopped in the middle of stage 1 (a checkpoint with optimizer and scheduler state)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    with pytest.raises(TrainingStopped):
        api.train(tiny_tensor(), device="cpu", out_dir=out, callbacks=[StopAt(1, 3)], **{**TINY, "niter": 6})
    return out


def crafted_run(src: Path, dst: Path, mutate) -> Path:
    """A copy of ``src`` whose checkpoint's training record went through ``mutate(record["train"])``."""
    shutil.copytree(src, dst)
    record = torch.load(dst / "checkpoint.pt", weights_only=True)
    mutate(record["train"])
    torch.save(record, dst / "checkpoint.pt")
    return dst


# --- 1. paths ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["..", "...", ".", "", " ", ".x", "a/b", "..\\..\\x", "a\0b", "x" * 500, ". .", "/"])
def test_safe_name_is_one_plain_visible_folder_name(text, tmp_path):
    name = safe_name(text)
    assert name and len(name) <= MAX_NAME_CHARS
    assert not name.startswith(".") and not any(c in name for c in "/\\\0")
    assert (tmp_path / name).parent == tmp_path and is_inside(tmp_path, tmp_path / name)


def test_inside_refuses_links_out_of_the_root_for_reading_and_writing(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "ok").mkdir()
    (root / "out").symlink_to(outside)  # a folder link
    (root / "file").symlink_to(outside / "secret")  # a (dangling) file link: a write would follow it
    assert inside(root, root / "ok" / "new") == root / "ok" / "new"
    for bad in (root / "out", root / "out" / "x", root / "file", root / ".." / "outside", Path("/etc")):
        with pytest.raises(UserError, match="leads outside"):
            inside(root, bad)


def test_default_output_folder_of_a_stem_of_dots_stays_in_the_root(tmp_path):
    config = consingan.make_config(**TINY)
    for name in ("...png", "..png", ". .png", ".png"):
        out = api.default_out_dir(name, config, root=tmp_path / "models")
        assert is_inside(tmp_path / "models", out) and out.parent.parent == tmp_path / "models", out
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "rocket").symlink_to(tmp_path)  # a folder named like the image's stem, linked out
    with pytest.raises(UserError, match="leads outside"):
        api.default_out_dir("rocket.png", config, root=tmp_path / "models")


def test_train_command_with_a_stem_of_dots_writes_under_trained_models(tmp_path, monkeypatch):
    image = tmp_path / "...png"
    Image.fromarray((np.random.default_rng(0).random((30, 45, 3)) * 255).astype(np.uint8)).save(image, format="PNG")
    seen = {}
    monkeypatch.setattr(api, "train", lambda *a, **k: seen.setdefault("out", k["out_dir"]))
    run_cli("main_train.py", "--input_name", image, "--niter", "1", "--train_stages", "2", "--device", "cpu")
    out = Path(seen["out"])
    assert out.parent.name == "image" and out.parent.parent.name == "TrainedModels", out
    if out.parent.exists() and not any(out.parent.iterdir()):
        out.parent.rmdir()  # the output check of the command made nothing else


def test_model_store_refuses_model_files_and_web_folders_linked_out_of_the_root(tmp_path):
    from consingan.webapp.store import ModelStore

    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "a").mkdir(parents=True), (root / "b").mkdir(), outside.mkdir()
    (outside / "model.pt").write_bytes(b"x")
    (root / "a" / "model.pt").symlink_to(outside / "model.pt")  # a model file linked from outside
    (root / "b" / "model.pt").write_bytes(b"x")
    (root / "b" / "Web").symlink_to(outside)  # results would go outside
    store = ModelStore(root)
    assert store.models() == ["b"]
    with pytest.raises(UserError, match="leads outside"):
        store.model_dir("a")
    with pytest.raises(UserError, match="leads outside"):
        store.results_dir("b", "samples")
    assert sorted(p.name for p in outside.iterdir()) == ["model.pt"]


def test_batch_names_of_dots_finish_and_stay_in_the_root(tmp_path):
    for name in (".hidden.png", "...png", "a.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name, format="PNG")
    jobs = batch.collect_jobs(tmp_path)  # spun forever on a leading dot
    names = [j.name for j in jobs]
    assert len(set(n.lower() for n in names)) == 3 and not any(n.startswith(".") for n in names), names
    rows = [{"image": str(tmp_path / "a.png"), "name": n} for n in (".x", ".x", "..x", "x")]
    names = [j.name for j in batch.collect_jobs(rows)]
    assert names == ["x", "x_2", "x_3", "x_4"]


def test_batch_refuses_a_model_folder_linked_out_of_the_root(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "a").symlink_to(outside)
    job = batch.Job(str(tmp_path / "a.png"), "a", {})
    assert "outside --out_root" in batch.foreign(root, job)
    with pytest.raises(UserError, match="leads outside"):
        batch.job_dir(root, "a")


def test_files_in_a_run_folder_that_link_out_are_never_written_through(interrupted_run, tmp_path):
    from consingan.storage.outputs import LOCK_FILE

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(outside / "victim")
    with pytest.raises(OSError):
        api.resume(run, device="cpu")
    (run / "log.jsonl").unlink()
    (run / LOCK_FILE).symlink_to(outside / "victim")
    with pytest.raises(OSError):
        api.resume(run, device="cpu")
    (run / LOCK_FILE).unlink()
    shutil.rmtree(run / "1")
    (run / "1").symlink_to(outside)  # the stage folder the resumed stage writes its images into
    with pytest.raises(UserError, match="leads outside"):
        api.resume(run, device="cpu")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "keep me\n"


# --- 2. image sizes before decoding ------------------------------------------------------------------

def test_a_decompression_bomb_is_refused_from_its_header_in_little_memory(tmp_path):
    bomb = real_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"12000x12000 pixels.*MAX_IMAGE_PIXELS"):
            consingan.read_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak  # decoding it would make a 144 MB array


@pytest.mark.parametrize("reader", ["read_array", "as_image", "mask", "paint", "compose", "naive"])
def test_every_file_input_goes_through_the_size_check(tmp_path, reader):
    bomb = forged_png(tmp_path / "bomb.png", 20000, 20000)
    from consingan.tasks import compose, masks, paint

    calls = {
        "read_array": lambda: image_files.read_array(bomb),
        "as_image": lambda: consingan.as_image(str(bomb)),
        "mask": lambda: masks.read_mask(bomb),
        "paint": lambda: paint.painting_tensor(str(bomb)),
        "compose": lambda: compose.write_composite(bomb, bomb, tmp_path / "out.png", 0, 0),
        "naive": lambda: image_files.read_image(bomb, "naive image"),
    }
    with pytest.raises(UserError, match="MAX_IMAGE_PIXELS"):
        calls[reader]()


def test_the_limit_is_one_setting_that_the_environment_overrides(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    assert image_files.image_size(small) == (40, 30)
    monkeypatch.setenv(image_files.MAX_PIXELS_ENV, "1000")
    with pytest.raises(UserError, match=r"40x30 pixels.*MAX_IMAGE_PIXELS: 0\.001 megapixels"):
        consingan.read_image(small)
    with pytest.raises(UserError, match="MAX_IMAGE_PIXELS"):
        consingan.as_image(np.zeros((30, 40, 3), np.uint8))
    monkeypatch.setenv(image_files.MAX_PIXELS_ENV, "lots")
    with pytest.raises(UserError, match="CONSINGAN_MAX_PIXELS='lots' is not a positive whole number"):
        consingan.read_image(small)


def test_web_inputs_check_the_size_before_gradio_decodes(tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import FileData

    from consingan.webapp import actions
    from consingan.webapp.components import checked_image, checked_image_editor
    from consingan.webapp.store import ModelStore

    bomb = forged_png(tmp_path / "bomb.png", 20000, 20000)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    image = checked_image(type="filepath")
    # the Train tab's input hands the path over untouched (Gradio would open and convert it) ...
    for f in (bomb, text):
        assert image.preprocess(FileData(path=str(f), orig_name=f.name)) == str(f)
    # ... and the app's one reader says what is wrong in one line
    state = actions.AppState(ModelStore(tmp_path / "models"), tmp_path)
    with pytest.raises(UserError, match="MAX_IMAGE_PIXELS"):
        actions.training_source(state, str(bomb), None)
    with pytest.raises(UserError, match=r"^cannot read the training image .*notes\.png .*give a valid PNG") as err:
        actions.training_source(state, str(text), None)
    assert "\n" not in str(err.value)
    # the canvases (ImageEditor) refuse a bomb before decoding it
    editor = checked_image_editor(type="numpy")
    with pytest.raises(gr.Error, match="MAX_IMAGE_PIXELS"):
        editor.convert_and_format_image(FileData(path=str(bomb), orig_name="bomb.png"))
    with pytest.raises(gr.Error, match="MAX_IMAGE_PIXELS"):
        editor.convert_and_format_image(bomb.read_bytes())
    with pytest.raises(UserError, match="MAX_IMAGE_PIXELS"):
        actions._as_array(str(bomb))


# --- 3. batch: no silent hang ---------------------------------------------------------------------------

def test_batch_progress_must_be_known(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="--progress 'bogus' is not one of auto, plain, none"):
        batch.run(tmp_path / "a.png", tmp_path / "out", progress="bogus")


def test_sigterm_while_ray_starts_says_so_and_exits_143(tmp_path, monkeypatch):
    import signal

    pytest.importorskip("ray")
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")

    def terminated(**kwargs):  # what the SIGTERM handler does while ray.init runs
        batch._signal_seen.append(signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "start_ray", terminated)
    proc = run_cli("-m", "consingan", "batch", "--images", tmp_path / "a.png", "--out_root", tmp_path / "out",
                   check=False)
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: stopped while Ray was starting; nothing was trained" in proc.stderr and "SIGTERM" in proc.stderr


def test_resources_no_node_has_are_refused_before_any_job():
    fake = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    batch.check_resources(fake, 1, 0)
    with pytest.raises(UserError, match="--cpus_per_job 64 .*at most 2 CPUs"):
        batch.check_resources(fake, 64, 0)
    with pytest.raises(UserError, match="--gpus_per_job 1 .*0 GPUs"):
        batch.check_resources(fake, 1, 1)


def _serve_once(reply: bytes | None):
    """A loopback TCP server that answers every connection with ``reply`` (None: closes at once)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    if reply:
                        conn.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=loop, daemon=True).start()
    return server


def test_an_address_that_answers_but_is_not_ray_is_refused_at_once():
    for reply in (b"HTTP/1.1 400 Bad Request\r\n\r\n", None):
        server = _serve_once(reply)
        port = server.getsockname()[1]
        try:
            with pytest.raises(UserError, match="answers but is not a Ray cluster"):
                batch._check_reachable(f"127.0.0.1:{port}")
        finally:
            server.close()
    # a server that speaks HTTP/2 (gRPC, as Ray's GCS does) passes: it answers with a SETTINGS frame
    server = _serve_once(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    try:
        batch._check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()


# --- 4. crafted training state and model files ----------------------------------------------------------

def _moment_of_wrong_shape(t):
    first = next(iter(t["opt_g"]["state"]))
    t["opt_g"]["state"][first]["exp_avg"] = torch.zeros(2, 2)


@pytest.mark.parametrize("mutate, words", [
    (lambda t: t.update(stage=1.5), "stage is 1.5, not a whole number"),
    (lambda t: t.update(stage=7), "stage is 7, but its model has 2 of 3 stages"),
    (lambda t: t.update(iteration="3"), "iteration is '3'"),
    (lambda t: t.update(train_seconds="soon"), "elapsed time"),
    (lambda t: t.update(train_seconds=float("nan")), "elapsed time"),
    (lambda t: t["rng"].update(cpu=torch.zeros(10, dtype=torch.uint8)), "cpu random generator state has 10 bytes"),
    (lambda t: t["rng"].update(cpu=torch.zeros(5056, dtype=torch.int64)), "not a 1-D uint8 tensor"),
    (lambda t: t["sched_g"].update(last_epoch="x"), "sched_g.last_epoch"),
    (lambda t: t["sched_d"].update(step=1), "sched_d has the field 'step'"),
    (lambda t: t["opt_d"].update(param_groups=[]), "opt_d has 0 parameter groups"),
    (_moment_of_wrong_shape, "exp_avg of parameter .* shape \\(2, 2\\)"),
])
def test_crafted_training_state_is_one_line_before_training(interrupted_run, tmp_path, mutate, words):
    run = crafted_run(interrupted_run, tmp_path / "run", mutate)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match=words) as err:
        api.resume(run, device="cpu")
    assert "\n" not in str(err.value)
    assert (run / "checkpoint.pt").read_bytes() == before and not (run / "model.pt").exists()


def test_train_resume_of_a_crafted_state_exits_2_with_one_line(interrupted_run, tmp_path):
    run = crafted_run(interrupted_run, tmp_path / "run", _moment_of_wrong_shape)
    line = one_line_error(run_cli("main_train.py", "--resume", run, check=False))
    assert "exp_avg" in line and "older consingan" not in line


def test_an_untouched_checkpoint_still_resumes(interrupted_run, tmp_path):
    run = crafted_run(interrupted_run, tmp_path / "run", lambda t: None)
    api.resume(run, device="cpu")
    assert (run / "model.pt").is_file()


def test_a_model_file_claiming_a_huge_nfc_is_refused_before_allocating(tmp_path):
    model = consingan.train(tiny_tensor(), device="cpu", **{**TINY, "niter": 2})
    model.save(tmp_path / "m")
    record = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    record["config"]["nfc"] = 4096  # a 4096x4096x3x3 convolution per layer: gigabytes if it were built
    record["fixed_noise"] = [z if k == 0 else torch.zeros(1, 4096, *z.shape[-2:])  # consistent but for the weights
                             for k, z in enumerate(record["fixed_noise"])]
    torch.save(record, tmp_path / "m" / "model.pt")
    code = ("import resource, sys\nfrom consingan import api\nfrom consingan.errors import UserError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    api.load(sys.argv[1], device='cpu')\nexcept UserError as e:\n    print('refused:', e)\n"
            "print('grew', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert "refused:" in proc.stdout and "do not fit its settings" in proc.stdout, proc.stdout + proc.stderr
    grew_kb = int(proc.stdout.split("grew")[-1])
    assert grew_kb < 300 * 1024, grew_kb  # building the networks would take gigabytes


# --- 5. a full disk inside torch.save ---------------------------------------------------------------------

def _torch_writer_full(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 5056 vs 4982")


def test_torch_writer_failure_is_a_full_disk_with_the_checkpoint_kept(tmp_path, monkeypatch):
    from consingan.storage import model_file

    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):  # the first checkpoint is written, then the disk is full
        calls["n"] += 1
        if calls["n"] > 1:
            _torch_writer_full()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(model_file.torch, "save", save)
    with pytest.raises(TrainingStopped, match=r"no space left on .*kept the checkpoint of stage") as stop:
        api.train(tiny_tensor(), device="cpu", out_dir=out, checkpoint_every=2, **{**TINY, "niter": 6})
    assert stop.value.no_space and (out / "checkpoint.pt").is_file()
    assert not [p for p in out.rglob("*.tmp*")]


def test_train_command_on_a_full_disk_inside_torch_save_says_so_in_one_line(tmp_path, monkeypatch, tiny_image):
    from consingan.storage import model_file

    monkeypatch.setattr(model_file.torch, "save", _torch_writer_full)
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", tmp_path / "run", "--niter", "4",
                   "--train_stages", "2", "--nfc", "8", "--min_size", "12", "--max_size", "30", "--device", "cpu",
                   "--checkpoint_every", "2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: no space left on" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_real_full_disk_while_training(tmp_path, tiny_image):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", disk / "run", "--niter", "30",
                       "--train_stages", "3", "--nfc", "16", "--min_size", "12", "--max_size", "40", "--device", "cpu",
                       "--checkpoint_every", "5", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "error: no space left on" in proc.stderr
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_batch_image_stopped_by_a_full_disk_resumes_on_a_plain_rerun(tmp_path, monkeypatch, tiny_image):
    from consingan.storage import model_file

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            _torch_writer_full()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(model_file.torch, "save", save)
    spec = dict(root=str(tmp_path / "runs"), name="tiny", image=str(tiny_image), settings={**TINY, "niter": 6},
                batch="b1", force=False, device="cpu", gpus_per_job=0, cpus_per_job=torch.get_num_threads(),
                checkpoint_every=2, samples=0, evaluate=False, eval_samples=2)
    (tmp_path / "runs" / batch.STATE_DIR).mkdir(parents=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    try:
        result = batch.run_job(spec)
        assert result["status"] == batch.INTERRUPTED and "no space left" in result["error"], result
        job = batch.Job(str(tiny_image), "tiny", spec["settings"])
        results, todo = batch.plan([job], tmp_path / "runs", 0, False, retry_failed=False, force=False)
        assert [j.name for j in todo] == ["tiny"]  # a plain rerun goes on with it
        result = batch.run_job({**spec, "batch": "b2"})
        assert result["status"] == batch.DONE and result["resumed"], result
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads


# --- 6. two batches on one --out_root ----------------------------------------------------------------------

def test_the_summary_says_what_is_on_disk(tmp_path):
    root = tmp_path / "runs"
    out = root / "a"
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"x")
    (out / "config.json").write_text(json.dumps({"input_name": "/img/a.png", "manualSeed": 3}))
    job = batch.Job("/img/a.png", "a", {})
    failed = batch.JobResult(job.image, "a", batch.FAILED, f"{out} is in use by another run (pid 1)")
    done = batch.on_disk(root, job, failed, samples=0, evaluate=False)
    assert (done.status, done.error, done.seed) == (batch.DONE, None, 3)
    (out / "checkpoint.pt").write_bytes(b"x")  # not finished: the failure stands
    assert batch.on_disk(root, job, failed, samples=0, evaluate=False).status == batch.FAILED


def test_a_job_whose_folder_another_batch_holds_leaves_that_batchs_record(tmp_path, tiny_image):
    root = tmp_path / "runs"
    out = root / "tiny"
    (root / batch.STATE_DIR).mkdir(parents=True)
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    batch.write_record(root, "tiny", {"image": str(tiny_image), "status": "running", "batch": "other"})
    spec = dict(root=str(root), name="tiny", image=str(tiny_image), settings=dict(TINY), batch="mine", force=False,
                device="cpu", gpus_per_job=0, cpus_per_job=torch.get_num_threads(), checkpoint_every=2, samples=0,
                evaluate=False, eval_samples=2)
    with claim_dir(out, fresh=False):
        result = batch.run_job(spec)
    assert result["status"] == batch.FAILED and "in use by another run" in result["error"], result
    assert batch.read_record(root, "tiny").get("status") != batch.FAILED


# --- 7. input parsing and messages ---------------------------------------------------------------------------

def test_manifest_and_list_problems_are_one_line_exit_2(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "wide.csv").write_text("image,name\na.png,x,extra\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.png\n".encode("latin-1"))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "loop.txt").write_text("loop1\n")
    for images, words in (("wide.csv", "line 2 has more cells than the header"),
                          ("latin1.txt", "is not UTF-8 text"),
                          ("loop.txt", "a loop of symbolic links")):
        line = one_line_error(run_cli("-m", "consingan", "batch", "--images", tmp_path / images, "--out_root",
                                      tmp_path / "out", check=False))
        assert words in line, line


def test_batch_progress_flag_bogus_is_refused(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    line = one_line_error(run_cli("-m", "consingan", "batch", "--images", tmp_path / "a.png", "--out_root",
                                  tmp_path / "out", "--progress", "bogus", check=False))
    assert "--progress 'bogus'" in line


def test_app_on_a_taken_port_says_so(tmp_path):
    pytest.importorskip("gradio")
    from consingan.webapp import check_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} is taken .*; pass --port \\d+"):
            check_port("127.0.0.1", port)
        line = one_line_error(run_cli("-m", "consingan", "app", "--port", port, "--models_root", tmp_path / "m",
                                      check=False))
        assert f"port {port} is taken" in line


def test_sr_factor_too_large_blames_sr_factor():
    from consingan.plan import check_samples

    config = consingan.make_config(**TINY)
    model = SimpleNamespace(config=config, shapes=[(30, 45)], device=torch.device("cpu"))
    for factor in (1000.0, 1e308):
        with pytest.raises(UserError) as err:
            check_samples(model, factor, factor, 1, flags=(f"--sr_factor {factor:g}", "use a smaller --sr_factor"))
        text = str(err.value)
        assert "--sr_factor" in text and "--scale_h" not in text and "nan" not in text and "inf" not in text, text
    from consingan.tasks.superres import check_factor

    for bad in (float("inf"), float("nan")):
        with pytest.raises(UserError, match="--sr_factor must be a finite number"):
            check_factor(bad)


def test_relative_roots_are_not_doubled(tiny_image, tmp_path, monkeypatch):
    """A relative --out_dir and the default TrainedModels/ (relative to the working folder): the model and
    its stage folders land where the command says, never under a second copy of the root."""
    monkeypatch.chdir(tmp_path)
    assert inside("TrainedModels", Path("TrainedModels") / "a" / "b") == Path("TrainedModels/a/b")
    with pytest.raises(UserError):
        inside("TrainedModels", Path("TrainedModels") / ".." / "x")
    out = Path("runs") / "quickstart"
    consingan.train(str(tiny_image), out_dir=out, device="cpu", **{**TINY, "train_stages": 2, "niter": 2})
    assert (out / "model.pt").is_file() and (out / "1" / "real.png").is_file()
    assert not (out / "runs").exists()
    config = consingan.make_config(**TINY)
    default = consingan.api.default_out_dir("tiny.png", config)
    assert default.parts[:2] == ("TrainedModels", "tiny"), default
