"""The thread rule of CPU training (consingan/process.py), the --threads flag and what config.json records."""
import json

import pytest
import torch

import consingan
from consingan import process as runtime
from consingan.errors import UserError
from conftest import TINY, TINY_FLAGS, run_cli


@pytest.fixture
def rule(monkeypatch):
    """The rule as a user gets it: no CONSINGAN_THREADS (conftest sets one for the other tests)."""
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)


@pytest.mark.parametrize("busy, cap, want", [
    (0.0, 2, 2),    # a quiet 2-core machine: both cores
    (0.1, 2, 2),    # a little background work: still both
    (1.0, 2, 1),    # one busy process: the free core
    (2.0, 2, 1),    # two busy processes: one thread (never 0)
    (5.0, 2, 1),
    (0.0, 1, 1),    # torch (OMP_NUM_THREADS, the caller's set_num_threads) caps it
    (None, 2, 2),   # the load cannot be measured: torch's count
])
def test_the_rule_takes_the_free_cores_at_most_torchs_count(monkeypatch, busy, cap, want):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: {0, 1})
    monkeypatch.setattr(runtime, "busy_cpus", lambda cpus=None, window=0: busy)
    assert runtime.auto_threads(cap) == want


def test_a_many_core_machine_keeps_its_free_cores(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: set(range(16)))
    monkeypatch.setattr(runtime, "busy_cpus", lambda cpus=None, window=0: 3.4)
    assert runtime.auto_threads(16) == 13
    assert runtime.auto_threads(8) == 8


def test_busy_cpus_is_a_share_of_the_usable_cpus():
    busy = runtime.busy_cpus(window=0.05)
    assert busy is None or 0.0 <= busy <= len(runtime.usable_cpus()) + 1e-9


def test_choose_threads_given_env_rule_and_gpu(rule, monkeypatch):
    monkeypatch.setattr(runtime, "auto_threads", lambda cap=None: 7)
    assert runtime.choose_threads(3, "cpu") == 3
    assert runtime.choose_threads(0, "cpu") == 7
    assert runtime.choose_threads(None, "cpu") == 7
    assert runtime.choose_threads(None, "cuda") == torch.get_num_threads()  # the GPU path is left as it is
    monkeypatch.setenv(runtime.THREADS_ENV, "4")
    assert runtime.choose_threads(None, "cpu") == 4
    assert runtime.choose_threads(1, "cpu") == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(runtime.THREADS_ENV, bad)
        with pytest.raises(UserError, match=runtime.THREADS_ENV):
            runtime.choose_threads(None, "cpu")
    with pytest.raises(UserError, match="--threads -1"):
        runtime.choose_threads(-1, "cpu")


def test_torch_threads_puts_the_count_back_also_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with runtime.torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_a_training_records_its_threads_and_leaves_the_process_as_it_was(rule, monkeypatch, tmp_image_dir):
    monkeypatch.setattr(runtime, "auto_threads", lambda cap=None: 1)
    seen = []
    monkeypatch.setattr(consingan.api, "_run", lambda *a, **k: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    consingan.train(tmp_image_dir / "tiny.png", device="cpu", out_dir=tmp_image_dir / "rule", **TINY)
    consingan.train(tmp_image_dir / "tiny.png", device="cpu", out_dir=tmp_image_dir / "given", threads=2, **TINY)
    assert seen == [1, 2]  # the count the training ran under
    assert torch.get_num_threads() == before
    assert json.loads((tmp_image_dir / "rule" / "config.json").read_text())["threads"] == 1
    assert json.loads((tmp_image_dir / "given" / "config.json").read_text())["threads"] == 2


def test_resume_defaults_to_the_recorded_count(tmp_path):
    from consingan.api import recorded_threads
    from consingan.storage.rundir import RunDir

    run = RunDir(tmp_path)
    assert recorded_threads(run) is None  # a run from before the count was recorded: the rule
    for value, want in ((3, 3), (0, None), ("2", None), (True, None)):
        (tmp_path / "config.json").write_text(json.dumps({"threads": value}))
        assert recorded_threads(run) == want


def test_the_flag_reaches_config_json(tiny_image, tmp_path):
    out = tmp_path / "run"
    flags = [f if f != "20" else "2" for f in TINY_FLAGS]  # 2 iterations per stage
    run_cli("main_train.py", "--input_name", tiny_image, *flags, "--out_dir", out, "--threads", "1")
    assert json.loads((out / "config.json").read_text())["threads"] == 1
    bad = run_cli("main_train.py", "--input_name", tiny_image, *flags, "--out_dir", tmp_path / "bad",
                  "--threads", "-1", check=False)
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()


def test_batch_threads_must_match_its_cpus_per_job(tmp_path):
    from consingan import batch

    with pytest.raises(UserError, match="--cpus_per_job 2"):
        batch.run(str(tmp_path), tmp_path / "out", cpus_per_job=1, threads=2)
    assert batch.job_threads(0.5) == 1 and batch.job_threads(2) == 2


@pytest.fixture
def tmp_image_dir(tiny_image):
    return tiny_image.parent
