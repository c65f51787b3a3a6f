"""The engine as a library piece (issue 19): reproducible within one process, stoppable from another
thread, observable through callbacks, and free of process-wide side effects."""
import ast
import threading
from pathlib import Path

import pytest
import torch

import consingan
from consingan.callbacks import Callbacks
from consingan.core.engine import TrainingStopped

SETTINGS = dict(train_stages=3, niter=6, nfc=4, min_size=12, max_size=40, manualSeed=5)


def image():
    y, x = torch.meshgrid(torch.linspace(-1, 1, 30), torch.linspace(-1, 1, 45), indexing="ij")
    return torch.stack([torch.sin(3 * x), torch.cos(4 * y), x * y]).unsqueeze(0)


def weights(model):
    return torch.cat([p.flatten() for p in model.G.state_dict().values()])


def test_two_trainings_in_one_process_give_the_same_model_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = consingan.train(image(), device="cpu", **SETTINGS)
    assert torch.equal(torch.get_rng_state(), before)  # the library drew nothing from the global generator
    torch.rand(7)  # whatever the caller draws between runs does not matter
    b = consingan.train(image(), device="cpu", **SETTINGS)
    assert torch.equal(weights(a), weights(b))
    assert all(torch.equal(x, y) for x, y in zip(a.fixed, b.fixed)) and a.amps == b.amps
    c = consingan.train(image(), device="cpu", **{**SETTINGS, "manualSeed": 6})
    assert not torch.equal(weights(a), weights(c))


class Recorder(Callbacks):
    def __init__(self):
        self.events, self.logged, self.images, self.ends = [], {}, {}, []

    def on_stage_start(self, stage, num_stages, niter, first_iter):
        self.events.append(("start", stage, num_stages, niter, first_iter))

    def on_iteration(self, stage, iteration, logged):
        if logged:
            self.logged.setdefault(stage, []).append((iteration, dict(logged)))

    def on_image(self, stage, name, image):
        self.images.setdefault(stage, {})[name] = image.shape

    def on_stage_end(self, stage, model):
        self.ends.append((stage, model.num_stages))


def test_custom_callbacks_receive_every_stages_losses_and_images(tmp_path):
    rec = Recorder()
    consingan.train(image(), device="cpu", callbacks=[rec], out_dir=tmp_path / "run", **SETTINGS)
    assert [e[:2] for e in rec.events] == [("start", 0), ("start", 1), ("start", 2)]
    assert rec.ends == [(0, 1), (1, 2), (2, 3)]
    for stage in range(3):
        iters = [i for i, _ in rec.logged[stage]]
        assert iters == list(range(1, 7))  # 6 iterations: a log point each (at least 20 per stage)
        assert all({"loss_d", "loss_g", "loss_rec", "lr_g"} <= set(v) for _, v in rec.logged[stage])
        names = set(rec.images[stage])
        assert {"real.png", "fake_iter_6.png", "reconstruction_iter_6.png", "reconstruction.png",
                "samples_grid.png"} <= names
        # the run directory got the same images
        assert {p.name for p in (tmp_path / "run" / str(stage)).iterdir()} == names


@pytest.mark.slow
def test_a_training_in_a_thread_stops_within_one_iteration_of_its_stop_flag(tmp_path):
    stop = threading.Event()
    seen = []

    class StopAt(Callbacks):
        def on_iteration(self, stage, iteration, logged):
            seen.append((stage, iteration))
            if (stage, iteration) == (1, 3):
                stop.set()  # as a Stop button in another thread would

    result = {}

    def work():
        try:
            consingan.train(image(), device="cpu", out_dir=tmp_path / "run", callbacks=[StopAt()], stop=stop,
                            **{**SETTINGS, "niter": 50})
        except TrainingStopped as exc:
            result["stopped"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    stopped = result["stopped"]
    assert stopped.interrupted and seen[-1] == (1, 4)  # the iteration running when the flag was set, one more
    assert stopped.checkpoint == tmp_path / "run" / "checkpoint.pt" and stopped.checkpoint.exists()
    record = torch.load(stopped.checkpoint, weights_only=True)
    assert (record["train"]["stage"], record["train"]["iteration"]) == (1, 4)
    # and it goes on to the same model as a run that was never stopped
    resumed = consingan.api.resume(tmp_path / "run", device="cpu")
    whole = consingan.train(image(), device="cpu", **{**SETTINGS, "niter": 50})
    assert torch.equal(weights(resumed), weights(whole))


PACKAGE = Path(consingan.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The consingan modules a file imports (at the top or inside functions), as dotted names: for
    ``from package import name``, the module ``package.name`` where there is one, else the package."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0]  # consingan.webapp for consingan/webapp/__init__.py too
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("consingan"):
                names = [f"{target}.{a.name}" for a in node.names]
                found.update(n for n in names if _is_module(n))
                if not all(_is_module(n) for n in names):
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("consingan"))
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# The command line's own entry points: the only modules that may import consingan.cli.
ENTRY_POINTS = {"consingan.cli", "consingan.__main__"}


def test_no_import_cycles_and_core_depends_on_nothing_above_it():
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    modules = {(m[: -len(".__init__")] if m.endswith(".__init__") else m): p for m, p in modules.items()}
    assert {"consingan.webapp", "consingan.webapp.actions", "consingan.batch", "consingan.core.engine"} <= set(modules)
    graph = {m: {t for t in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    for m, deps in graph.items():
        if m.startswith("consingan.core."):
            allowed = ("consingan.core", "consingan.config", "consingan.errors")
            assert all(d.startswith(allowed) for d in deps), (m, deps)
        if m.startswith("consingan.storage."):
            assert not any(d.startswith(("consingan.tasks", "consingan.api", "consingan.cli")) for d in deps), (m, deps)
        # front-ends (the web app, the batch runner) use the library, never the command line
        assert m in ENTRY_POINTS or "consingan.cli" not in deps, f"{m} imports consingan.cli"
    # a cycle: a module reachable from itself, through imports at the top or inside functions, in every
    # module of the package, packages' __init__ files included ("consingan.x" runs consingan/__init__.py
    # first, which Python allows for: that implicit edge is left out)
    for start in graph:
        stack, seen = list(graph[start]), set()
        while stack:
            m = stack.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                stack.extend(graph.get(m, ()))


def test_a_command_prints_library_warnings_as_lines_and_leaves_pythons_warning_state_alone(tmp_path):
    import warnings

    from typer.testing import CliRunner

    from consingan.cli import app

    before, filters = warnings.showwarning, list(warnings.filters)
    result = CliRunner().invoke(app, ["generate", "--model_dir", str(tmp_path / "none"), "--gpu", "0", "--not_cuda"])
    assert result.exit_code == 2
    assert "warning: --gpu 0 is ignored: --not_cuda runs on the CPU" in result.output
    assert warnings.showwarning is before and warnings.filters == filters


def test_the_presets_numbers_are_written_once_for_help_and_readme():
    from typer.testing import CliRunner

    from consingan.cli import app
    from consingan.config import PRESETS, make_config, preset_flags

    readme = (PACKAGE.parent / "README.md").read_text()
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=10000).output.split())
    for name in PRESETS:
        flags = preset_flags(name)
        assert f"`{flags}`" in readme or not flags, name
        assert flags in help_text, name
    fast = make_config(preset="fast", manualSeed=1)  # the flags are what the preset sets
    assert "--niter_stages " + ",".join(map(str, fast.niter_stages)) in preset_flags("fast")
    with pytest.raises(TypeError):
        PRESETS["fast"]["top_Dsteps"] = 3  # read-only


def test_the_default_run_directory_is_named_from_the_image_and_settings(tmp_path):
    from consingan.config import make_config

    c = make_config(manualSeed=4, niter=7)
    path = consingan.api.default_out_dir("Images/Generation/rocket.png", c, root=tmp_path)
    assert path.parent == tmp_path / "rocket" and path.name.endswith("_niter_7_max_250_seed_4")
    path.mkdir(parents=True)
    assert consingan.api.default_out_dir("Images/Generation/rocket.png", c, root=tmp_path) != path  # never reused


def test_progress_may_be_an_object_of_the_callers(tmp_path):
    import io

    from consingan.errors import UserError
    from consingan.progress import PlainProgress

    stream = io.StringIO()
    consingan.train(image(), device="cpu", progress=PlainProgress(stream), **{**SETTINGS, "niter": 2})
    assert "stage 3/3: 2 iterations" in stream.getvalue()
    with pytest.raises(UserError, match="unknown progress 'lines'"):
        consingan.train(image(), device="cpu", progress="lines", out_dir=tmp_path / "r", **SETTINGS)
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("mode", ["harmonization", "superres"])
def test_every_task_leaves_the_generator_in_the_mode_it_found_it(mode):
    """Sampling runs G in eval mode and puts each module back: a model being trained stays in train mode
    (the engine and the web app's previews rely on it), a loaded one in eval mode."""
    from consingan.tasks.animate import Walk
    from consingan.tasks.harmonize import harmonize

    model = consingan.train(image(), train_mode=mode, device="cpu", **{**SETTINGS, "niter": 1})
    tasks = {"sample": lambda: model.sample(2, seed=0), "reconstruct": model.reconstruct,
             "animate": lambda: model.animate(Walk(num_frames=2), seed=0),
             "paint": lambda: model.paint(image(), num_samples=1, seed=0)}
    if mode == "harmonization":
        tasks["harmonize"] = lambda: harmonize(model, image(), seed=0)
    else:
        tasks["superres"] = lambda: model.super_resolve(1.5, seed=0)
    for training in (True, False):
        model.G.train(training)
        model.G.tail.train(not training)  # a mixed state comes back module by module
        before = [m.training for m in model.G.modules()]
        for name, task in tasks.items():
            task()
            assert [m.training for m in model.G.modules()] == before, (name, training)
