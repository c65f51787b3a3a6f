"""One owner per fact: the one-line error, SIGTERM as Ctrl-C, the seed draw, the device description,
the image suffixes and the run directory's names, each written once and asked by every front-end."""
import errno
import os
import signal

import pytest
import torch

from consingan.errors import UserError, one_line


def test_one_line_says_what_the_user_can_fix_and_leaves_bugs_alone():
    assert one_line(UserError("--niter must be at least 1"), "fix") == "--niter must be at least 1"
    line = one_line(PermissionError(errno.EACCES, "Permission denied", "/x/out.png"), "fix")
    assert "/x/out.png" in line and "Permission denied" in line
    assert one_line(MemoryError(), "lower --nfc") == "out of memory; lower --nfc"
    assert one_line(RuntimeError("CUDA out of memory. Tried to allocate"), "x") == "out of memory; x"
    assert one_line(RuntimeError("shape mismatch"), "fix") is None and one_line(KeyError("a"), "fix") is None


def test_the_cli_and_the_web_app_print_the_same_line():
    from consingan.webapp.errors import message_of  # Gradio is imported only when a handler is guarded

    exc = OSError(errno.ENOSPC, "No space left on device", "/d/f.png")
    assert message_of(exc) == one_line(exc, "anything")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="no SIGTERM on this platform")
def test_sigterm_is_ctrl_c_inside_the_block_and_the_old_handler_comes_back():
    from consingan.signals import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    restore = sigterm_as_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread before the next line
            for _ in range(10**6):
                pass
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_fresh_seed_is_drawn_in_one_place_in_the_references_range():
    from consingan.config import draw_seed, make_config

    seeds = {draw_seed() for _ in range(200)} | {make_config().manualSeed for _ in range(20)}
    assert all(1 <= s <= 10000 for s in seeds) and len(seeds) > 100


def test_the_device_description_names_a_gpu_and_keeps_what_it_cannot_name():
    from consingan.device import describe

    assert describe(torch.device("cpu")) == describe("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert describe("cuda") == "cuda"  # a batch job's device on a node without CUDA


def test_image_suffixes_read_include_what_is_written():
    from consingan.storage.image_files import READ_SUFFIXES, WRITE_SUFFIXES, is_image_name

    assert set(WRITE_SUFFIXES) < set(READ_SUFFIXES) and ".gif" not in WRITE_SUFFIXES
    assert is_image_name("a/B.PNG") and is_image_name("x.gif") and not is_image_name("x.gif", WRITE_SUFFIXES)


def test_the_run_directory_names_what_generate_evaluate_and_the_web_app_write(tmp_path):
    from consingan.storage.rundir import RunDir, samples_dir_name

    run = RunDir(tmp_path / "m")
    assert run.evaluation_dir() == tmp_path / "m" / "Evaluation"
    assert run.evaluation_dir("naive") == tmp_path / "m" / "Evaluation" / "naive"
    assert run.samples_dir == run.evaluation_dir() / "random_samples"
    assert run.metrics_file == run.evaluation_dir() / "metrics.json"
    assert run.results_dir == tmp_path / "m" / "Web"
    assert samples_dir_name(1.5, 2.0, 1) == "random_samples_scale_h_1.5_scale_w_2_start_scale_1"
