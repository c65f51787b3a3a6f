"""The page: one tab per task, wired to webapp.actions. Every handler is ``guarded``: an error shows as
the command line's one-line message, a warning as a warning, and the server goes on."""
from typing import Any

import gradio as gr
import numpy as np

from . import actions as act
from . import choices
from .components import checked_image, checked_image_editor
from .errors import guarded
from .jobs import DONE, QUEUED, RUNNING

LIST_TABS = ("samples", "harmonize", "paint", "superres", "animation", "explore")  # the model lists, in list_outputs order
PAD_SIDE = 180
PAD_RANGE = 3.0  # the pad spans -3..3 on both axes
SHOWN_SIDE = 384  # small models' images are shown enlarged to this longer side
# Results the API returns at the model's size, shown filling their boxes (the browser would show a
# small model's result at its own few pixels). Not for images one clicks into: Gradio's click
# coordinates assume an image is never shown larger than it is (those are enlarged on the server).
CSS = """
#harmonize-raw img, #harmonize-blended img, #superres-result img { width: 100%; height: 100%; object-fit: contain; }
"""


def pad_image(x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """The Explore pad: a grid with a dot at (x, y) (x to the right, y up)."""
    n = PAD_SIDE
    img = np.full((n, n, 3), 246, np.uint8)
    for k in range(1, 6):
        img[:, k * n // 6] = img[k * n // 6, :] = 215
    img[:, n // 2] = img[n // 2, :] = 160
    cx = int(round((x + PAD_RANGE) / (2 * PAD_RANGE) * (n - 1)))
    cy = int(round((PAD_RANGE - y) / (2 * PAD_RANGE) * (n - 1)))
    yy, xx = np.ogrid[:n, :n]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 30] = (220, 60, 40)
    return img


def shown_size(h: int, w: int, side: int = SHOWN_SIDE) -> tuple[int, int]:
    """(height, width) at which shown_large shows an image of h x w."""
    if max(h, w) >= side:
        return h, w
    f = side / max(h, w)
    return round(h * f), round(w * f)


def shown_large(image: np.ndarray, side: int = SHOWN_SIDE) -> np.ndarray:
    """An image enlarged (bicubic) for the page until its longer side reaches ``side``; the browser would
    show a small model's image at its own few pixels. The preview's smaller stage is enlarged to the
    same size, so the picture does not jump while dragging."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) >= side:
        return image
    sh, sw = shown_size(h, w, side)
    return np.asarray(Image.fromarray(image).resize((sw, sh), Image.BICUBIC))


def large_gif(path: str, side: int = 320) -> str:
    """The page's preview of a small model's GIF: a copy enlarged (bicubic) beside it; the file itself
    keeps the model's size."""
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        w, h = gif.size
        if max(w, h) >= side:
            return path
        f = side / max(w, h)
        size = (round(w * f), round(h * f))
        frames = [frame.convert("RGB").resize(size, Image.BICUBIC) for frame in ImageSequence.Iterator(gif)]
        duration, loop = gif.info.get("duration", 100), gif.info.get("loop", 0)
    out = path[: -len(".gif")] + "_preview.gif"
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=duration, loop=loop)
    return out


def job_markdown(state: act.AppState, snap: dict[str, Any] | None) -> str:
    from ..core.cost import describe_seconds
    from ..core.numbering import position_text

    if snap is None:
        return "No training yet. Pick an image and press **Train**."
    head = f"**Job {snap['id']}** ({snap['title']}): **{snap['state']}**"
    lines = [head]
    if snap["state"] == QUEUED:
        job = state.queue.get(snap["id"])
        if any(j.state == RUNNING for j in state.queue.jobs()):
            lines.append(f"waiting: number {state.queue.position(job)} in the queue (one training runs at a time)")
    if snap["state"] == RUNNING and snap["num_stages"]:
        left = "" if snap["seconds_left"] is None else f", about {describe_seconds(snap['seconds_left'])} left"
        lines.append(f"{position_text(snap['stage'], snap['iteration'], snap['num_stages'], snap['niter'])}, "
                     f"{describe_seconds(snap['elapsed'])} elapsed{left}")
        if snap["losses"]:
            lines.append("losses: " + ", ".join(f"{k} {v:.4g}" for k, v in snap["losses"].items()))
    if snap["message"] and snap["state"] != RUNNING:
        lines.append(snap["message"])
    elif snap["message"].startswith("stopping"):
        lines.append(snap["message"])
    lines.append(f"folder: `{snap['out_dir']}`")
    return "\n\n".join(lines)


def build(state: act.AppState) -> gr.Blocks:
    examples = act.examples(state)

    def mode_of(name: str):
        return state.store.info(name).get("train_mode")

    def model_dropdown(label: str, tab: str, elem_id: str):
        pick = choices.choose(tab, state.store.models(), mode_of)
        return gr.Dropdown(choices=pick.names, value=pick.value, label=label, allow_custom_value=True,
                           elem_id=elem_id)

    with gr.Blocks(title="ConSinGAN") as demo:
        gr.Markdown("## ConSinGAN: train on one image, then sample, harmonize, paint, enlarge and animate\n"
                    f"Models are read from and written to `{state.store.root}`.")
        finished_seen = gr.State(0)  # jobs ended when the lists were last refreshed
        shown = gr.State(None)  # (job id, image version) the page shows

        with gr.Tabs():
            # --- Train --------------------------------------------------------------------------
            with gr.Tab("Train", id="train", elem_id="tab-train") as tab_train:
                with gr.Row():
                    with gr.Column(scale=1):
                        t_image = checked_image(format="png", type="filepath", label="Training image", sources=["upload", "clipboard"],
                                           height=240, elem_id="train-image")
                        t_example = gr.Dropdown(choices=examples, value=None, label="... or an example from Images/",
                                                elem_id="train-example")
                        with gr.Row():
                            t_mode = gr.Dropdown(act.MODE_NAMES, value="generation", label="Mode", elem_id="train-mode")
                            t_preset = gr.Radio(list(act.PRESETS), value="fast", label="Preset",
                                                info="fast: fewer top-stage iterations; quick: 128 px, a first "
                                                     "look; paper: the paper's settings (README: The fast preset)",
                                                elem_id="train-preset")
                        with gr.Accordion("Settings (blank: the mode's and preset's default)", open=False,
                                          elem_id="train-settings"):
                            def setting(label, elem, hint="default"):
                                return gr.Textbox("", label=label, placeholder=hint, max_lines=1, elem_id=f"train-{elem}")

                            with gr.Row():
                                t_max = setting("max_size", "max-size", "250")
                                t_stages = setting("train_stages", "stages", "6 (harmonization 3)")
                                t_niter = setting("niter", "niter", "by the preset")
                            with gr.Row():
                                t_nfc = setting("nfc", "nfc", "64")
                                t_min = setting("min_size", "min-size", "25 (by the mode)")
                                t_seed = setting("seed", "seed", "random")
                            with gr.Row():
                                t_sr = setting("sr_factor (superres)", "sr-factor", "4")
                                t_colors = setting("paint_colors (paint)", "paint-colors", "5")
                        t_estimate = gr.Markdown(elem_id="train-estimate")
                        with gr.Row():
                            t_start = gr.Button("Train", variant="primary", elem_id="train-start")
                            t_stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                        with gr.Accordion("Resume an interrupted run", open=False):
                            t_resume_pick = gr.Dropdown(choices=state.store.interrupted(), value=None,
                                                        label="Interrupted run", allow_custom_value=True)
                            t_resume = gr.Button("Resume")
                    with gr.Column(scale=1):
                        # the job shown (its number heads the status); not a field to type into
                        t_job = gr.Number(None, label="Job shown", precision=0, interactive=False, visible=False,
                                          elem_id="train-job")
                        t_status = gr.Markdown(job_markdown(state, None), elem_id="train-status")
                        with gr.Row():
                            t_samples = gr.Image(format="png", label="Latest samples", interactive=False, height=260,
                                                 elem_id="train-samples")
                            t_recon = gr.Image(format="png", label="Reconstruction", interactive=False, height=260,
                                               elem_id="train-reconstruction")
                        t_result = gr.Image(format="png", label="Fine-tuning result", interactive=False, visible=False)
                gr.Markdown("### Models")
                t_table = gr.Dataframe(act.models_table(state), headers=["model", "mode", "stages", "trained at (w x h)", "saved"],
                                       interactive=False, elem_id="train-models")
                t_refresh = gr.Button("Refresh the lists", size="sm")
                timer = gr.Timer(1.0)

            # --- Samples ------------------------------------------------------------------------
            with gr.Tab("Samples", id="samples", elem_id="tab-samples") as tab_samples:
                with gr.Row():
                    with gr.Column(scale=1):
                        s_model = model_dropdown("Model", "samples", "samples-model")
                        with gr.Row():
                            s_num = gr.Number(8, elem_id="samples-num", label="Number", precision=0)
                            s_seed = gr.Number(0, elem_id="samples-seed", label="Seed", precision=0)
                        with gr.Row():
                            s_h = gr.Number(1.0, elem_id="samples-scale-h", label="Height scale", step=0.1)
                            s_w = gr.Number(1.0, elem_id="samples-scale-w", label="Width scale", step=0.1)
                            s_start = gr.Number(0, elem_id="samples-start", label="Start scale", precision=0,
                                                info="stages below keep the training image's layout")
                        s_go = gr.Button("Generate", variant="primary", elem_id="samples-go")
                        s_zip = gr.File(label="All samples (zip)", interactive=False)
                        s_where = gr.Markdown()
                    with gr.Column(scale=2):
                        s_gallery = gr.Gallery(format="png", label="Samples", columns=4, height=480, object_fit="contain", elem_id="samples-gallery")

            # --- Harmonize / edit ---------------------------------------------------------------
            with gr.Tab("Harmonize / edit", id="harmonize", elem_id="tab-harmonize") as tab_harmonize:
                h_model = model_dropdown("Harmonization or editing model", "harmonize", "harmonize-model")
                h_source = gr.Radio(["paste an object", "draw the mask"], value="paste an object",
                                    label="Naive image", elem_id="harmonize-source")
                with gr.Row():
                    with gr.Column(scale=1):
                        gr.Markdown("**Paste an object** onto the training image: upload it (its alpha channel is its "
                                    "shape), then move it with the sliders or click where its centre goes.")
                        h_object = checked_image(format="png", type="filepath", elem_id="harmonize-object", label="Object", image_mode="RGBA", height=160,
                                            sources=["upload", "clipboard"])
                        with gr.Row():
                            h_x = gr.Slider(0, 1, 0.5, step=0.01, label="x (centre)", elem_id="harmonize-x")
                            h_y = gr.Slider(0, 1, 0.5, step=0.01, label="y (centre)", elem_id="harmonize-y")
                            h_scale = gr.Slider(0.05, 3, 1.0, step=0.05, label="scale", elem_id="harmonize-scale",
                                                info="of the object's own pixels, on the training image")
                        h_size = gr.Markdown(elem_id="harmonize-size")
                        h_composite = gr.Image(format="png", label="Naive image (click to move the object)", interactive=False, height=260,
                                               elem_id="harmonize-composite")
                    with gr.Column(scale=1):
                        gr.Markdown("**Or draw the mask**: upload a naive image (the object already pasted in), "
                                    "then paint over the object with the brush.")
                        h_editor = checked_image_editor(format="png", type="numpy", label="Naive image and mask", height=360,
                                                  brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"),
                                                  elem_id="harmonize-editor")
                with gr.Row():
                    h_seed = gr.Number(0, label="Seed", precision=0)
                    h_go = gr.Button("Harmonize", variant="primary", elem_id="harmonize-go")
                with gr.Row():
                    h_raw = gr.Image(format="png", label="Result", interactive=False, height=300, elem_id="harmonize-raw")
                    h_blend = gr.Image(format="png", label="Result blended by the mask", interactive=False, height=300,
                                      elem_id="harmonize-blended")
                h_where = gr.Markdown()
                with gr.Row():
                    h_niter = gr.Number(500, label="Fine-tuning iterations", precision=0)
                    h_tune = gr.Button("Fine-tune on this naive image")
                h_tune_msg = gr.Markdown()

            # --- Paint --------------------------------------------------------------------------
            with gr.Tab("Paint", id="paint", elem_id="tab-paint") as tab_paint:
                with gr.Row():
                    with gr.Column(scale=2):
                        p_model = model_dropdown("Model (paint mode is made for this)", "paint", "paint-model")
                        p_load = gr.Button("Load the model's colours onto the canvas", elem_id="paint-load")
                        p_swatch = gr.Image(format="png", label="Palette", interactive=False, height=60, elem_id="paint-palette")
                        p_canvas = checked_image_editor(format="png", type="numpy", label="Canvas", height=380, image_mode="RGB",
                                                  brush=gr.Brush(colors=["#000000"], color_mode="fixed"),
                                                  elem_id="paint-canvas")
                        with gr.Row():
                            p_num = gr.Number(4, elem_id="paint-num", label="Variations", precision=0)
                            p_seed = gr.Number(0, label="Seed", precision=0)
                            p_go = gr.Button("Paint to image", variant="primary", elem_id="paint-go")
                    with gr.Column(scale=2):
                        p_gallery = gr.Gallery(format="png", label="Images", columns=2, height=480, object_fit="contain", elem_id="paint-gallery")
                        p_where = gr.Markdown()

            # --- Super-resolution ---------------------------------------------------------------
            with gr.Tab("Super-resolution", id="superres", elem_id="tab-superres") as tab_superres:
                r_model = model_dropdown("Super-resolution model (train one with mode superres)", "superres",
                                         "superres-model")
                with gr.Row():
                    r_factor = gr.Number(4.0, elem_id="superres-factor", label="Factor")
                    r_seed = gr.Number(0, label="Seed", precision=0)
                    r_go = gr.Button("Enlarge", variant="primary", elem_id="superres-go")
                with gr.Row():
                    r_sr = gr.Image(format="png", label="ConSinGAN", interactive=False, height=420, elem_id="superres-result")
                    r_bic = gr.Image(format="png", label="Bicubic", interactive=False, height=420)
                r_where = gr.Markdown()

            # --- Animation ----------------------------------------------------------------------
            with gr.Tab("Animation", id="animation", elem_id="tab-animation") as tab_animation:
                with gr.Row():
                    with gr.Column(scale=1):
                        a_model = model_dropdown("Model (animation mode is made for this)", "animation", "animation-model")
                        with gr.Row():
                            a_start = gr.Number(1, elem_id="animation-start", label="Start scale", precision=0)
                            a_seed = gr.Number(0, label="Seed", precision=0)
                        a_alpha = gr.Slider(0, 1, 0.1, step=0.01, label="alpha (pull towards the reconstruction)")
                        a_beta = gr.Slider(0, 1, 0.9, step=0.01, label="beta (momentum: smoother, slower)")
                        with gr.Row():
                            a_frames = gr.Number(40, elem_id="animation-frames", label="Frames", precision=0)
                            a_fps = gr.Number(10, label="Frames per second")
                            a_fmt = gr.Radio(["gif", "mp4"], value="gif", label="Format")
                        a_go = gr.Button("Animate", variant="primary", elem_id="animation-go")
                    with gr.Column(scale=1):
                        a_gif = gr.Image(format="png", label="Preview", type="filepath", interactive=False, height=360,
                                         elem_id="animation-preview")
                        a_video = gr.Video(label="Preview", interactive=False, visible=False)
                        a_file = gr.File(label="File", interactive=False)

            # --- Explore ------------------------------------------------------------------------
            with gr.Tab("Explore", id="explore", elem_id="tab-explore") as tab_explore:
                with gr.Row():
                    with gr.Column(scale=1):
                        e_model = model_dropdown("Model", "explore", "explore-model")
                        with gr.Row():
                            e_seed = gr.Number(0, elem_id="explore-seed", label="Seed", precision=0)
                            e_start = gr.Number(1, elem_id="explore-start", label="Start scale", precision=0,
                                                info="stages below keep the layout")
                        e_pad = gr.Image(value=pad_image(), format="png", label="Click to jump (x right, y up)", interactive=False,
                                         height=PAD_SIDE + 20, width=PAD_SIDE + 20, elem_id="explore-pad")
                        e_x = gr.Slider(-PAD_RANGE, PAD_RANGE, 0.0, step=0.05, label="x", elem_id="explore-x")
                        e_y = gr.Slider(-PAD_RANGE, PAD_RANGE, 0.0, step=0.05, label="y", elem_id="explore-y")
                        e_go = gr.Button("Render", elem_id="explore-go")
                    with gr.Column(scale=2):
                        e_image = gr.Image(format="png", label="Sample (a smaller preview while you drag)", interactive=False,
                                           height=420, elem_id="explore-image")

        # --- handlers -------------------------------------------------------------------------------

        def settings_of(mode, preset, mx, stages, niter, nfc, mn, seed, sr, colors):
            return act.make_settings(mode, preset, mx, stages, niter, nfc, mn, 0 if seed in (None, "") else seed,
                                     sr, colors)

        def estimate(image, example, *settings):
            """The expected time, or what is wrong with the settings (in the text: it updates as one types)."""
            try:
                path = None
                if image:
                    path = act.readable(state, image, "training image")
                elif example:
                    path = act.example_path(state, example)
                return act.estimate_text(state, path, settings_of(*settings))
            except act.UserError as exc:
                return f"**Settings:** {exc}"
            except Exception as exc:  # noqa: BLE001 - the estimate must never break the page
                return f"**No estimate:** {type(exc).__name__}: {exc}"

        @guarded
        def train(image, example, mode, preset, mx, stages, niter, nfc, mn, seed, sr, colors):
            path = act.training_source(state, image, example)
            settings = act.make_settings(mode, preset, mx, stages, niter, nfc, mn, seed, sr, colors)
            job = act.start_training(state, path, settings)
            return job.id, job_markdown(state, job.snapshot())

        @guarded
        def stop(job_id):
            job = state.queue.stop(job_id if job_id not in (None, "") else _latest_id())
            return job_markdown(state, job.snapshot())

        def _latest_id():
            job = state.queue.latest()
            if job is None:
                raise act.UserError("no training to stop")
            return job.id

        @guarded
        def resume(name):
            job = act.resume_training(state, name)
            return job.id, job_markdown(state, job.snapshot())

        def poll(job_id, seen, shown_key, *current):
            job = None
            if job_id not in (None, ""):
                try:
                    job = state.queue.get(job_id)
                except act.UserError:
                    job = None
            job = job or state.queue.latest()
            out = [job_markdown(state, job.snapshot() if job is not None else None)]
            key = None if job is None else (job.id, job.version)
            if job is None or key == shown_key:
                out += [gr.skip()] * 3
            else:
                with job.lock:
                    images = [job.samples, job.reconstruction, job.result]
                images = [None if im is None else shown_large(im, 256) for im in images]
                out += [gr.update(value=images[0]), gr.update(value=images[1]),
                        gr.update(value=images[2], visible=images[2] is not None)]
            count = state.queue.finished_count
            if count != seen:
                out += refreshed_lists(current, trained_in_page())
            else:
                out += [gr.skip()] * len(list_outputs)
            return out + [count, key]

        def trained_in_page():
            """The model of the training that ended last, when it finished (None otherwise)."""
            ended = [j for j in state.queue.jobs() if j.ended is not None]
            last = max(ended, key=lambda j: j.ended, default=None)
            if last is None or last.state != DONE:
                return None
            try:
                return state.store.name_of(last.out_dir)
            except ValueError:
                return None

        def refreshed_lists(current=(None,) * 6, trained=None):
            """The lists as the models are now: each tab keeps its pick while it exists, takes a model just
            trained in the page where it suits its mode, else the newest of the modes it suits."""
            names = state.store.models()
            picks = [choices.choose(tab, names, mode_of, now, trained) for tab, now in zip(LIST_TABS, current)]
            return [act.models_table(state), gr.update(choices=state.store.interrupted()),
                    *(gr.update(choices=p.names, value=p.value) for p in picks)]

        list_outputs = [t_table, t_resume_pick, s_model, h_model, p_model, r_model, a_model, e_model]
        model_lists = list_outputs[2:]
        train_settings = [t_mode, t_preset, t_max, t_stages, t_niter, t_nfc, t_min, t_seed, t_sr, t_colors]

        for trigger in (t_image.change, t_example.change, t_mode.change, t_preset.change,
                        *(box.blur for box in (t_max, t_stages, t_niter, t_nfc, t_min, t_sr, t_colors)),
                        *(box.submit for box in (t_max, t_stages, t_niter, t_nfc, t_min, t_sr, t_colors))):
            # one at a time, in order: a late answer for old settings must not overwrite the newest one
            trigger(estimate, [t_image, t_example, *train_settings], t_estimate, api_visibility="private",
                    show_progress="hidden", concurrency_id="estimate", concurrency_limit=1)
        demo.load(estimate, [t_image, t_example, *train_settings], t_estimate, api_visibility="private",
                  show_progress="hidden", concurrency_id="estimate", concurrency_limit=1)
        @guarded
        def show_example(example):
            return state.serve(act.example_path(state, example)) if example else gr.skip()

        t_example.change(show_example, t_example, t_image, api_visibility="private", show_progress="hidden")
        t_start.click(train, [t_image, t_example, *train_settings], [t_job, t_status], api_name="train")
        t_stop.click(stop, t_job, t_status, api_name="stop")
        t_resume.click(resume, t_resume_pick, [t_job, t_status], api_name="resume")
        timer.tick(poll, [t_job, finished_seen, shown, *model_lists],
                   [t_status, t_samples, t_recon, t_result, *list_outputs, finished_seen, shown],
                   api_visibility="private", show_progress="hidden")

        @guarded
        def refresh(*current):
            return refreshed_lists(current)

        t_refresh.click(refresh, model_lists, list_outputs, api_name="refresh")
        for tab in (tab_train, tab_samples, tab_harmonize, tab_paint, tab_superres, tab_animation, tab_explore):
            tab.select(refresh, model_lists, list_outputs, api_visibility="private", show_progress="hidden")
        # a page loaded later shows the models there are now, not those of when the server started
        demo.load(lambda: refreshed_lists(), None, list_outputs, api_visibility="private", show_progress="hidden")

        @guarded
        def job_status(job_id: int) -> dict:
            """A training job's state (queued, running, done, stopped, failed), stage, iteration, message."""
            return state.queue.get(job_id).snapshot()

        @guarded
        def wait_job(job_id: int, timeout: float, until: str = "end") -> dict:
            """Wait until the job ended (``until`` "end") or ran its first iteration ("iterating"), at most
            ``timeout`` seconds; its state as job_status gives it."""
            if until not in ("end", "iterating"):
                raise act.UserError(f"until must be 'end' or 'iterating', not {until!r}")
            return state.queue.wait(job_id, min(float(timeout), 3600.0), until).snapshot()

        @guarded
        def list_models() -> list:
            """The models under the models root (relative names)."""
            return state.store.models()

        gr.api(job_status, api_name="job_status")
        gr.api(wait_job, api_name="wait_job")
        gr.api(list_models, api_name="models")

        @guarded
        def samples(name, num, seed, sh, sw, start):
            files, archive, out = act.sample(state, name, num, seed, sh, sw, start)
            return [state.serve(f) for f in files], state.serve(archive), f"written to `{out}`"

        s_go.click(samples, [s_model, s_num, s_seed, s_h, s_w, s_start], [s_gallery, s_zip, s_where], api_name="sample")

        @guarded
        def composite(name, obj, x, y, scale):
            """The naive image as the page shows it: enlarged like the results (a click's pixel is mapped
            back in place()), the pasted object's outline in red."""
            if not name:
                return None
            if not obj:  # the background alone, until an object is uploaded
                return shown_large(act.model_image(act.naive_mode_model(state, name)))
            naive, mask = act.compose_object(state, name, obj, x, y, scale)
            view = naive.copy()
            edge = mask.astype(bool) & ~_eroded(mask.astype(bool))
            view[edge] = (255, 40, 40)
            return shown_large(view)

        def size_note(name):
            """What the scale is relative to: the model's training image, often far smaller than a photo."""
            if not name:
                return ""
            try:
                model = act.naive_mode_model(state, name)
            except act.UserError as exc:
                return str(exc)
            H, W = model.real.shape[-2:]
            sh, sw = shown_size(H, W)
            shown = f", shown {sw / W:.3g}x enlarged" if (sh, sw) != (H, W) else ""
            return (f"The model trained on a **{W}x{H} px** image{shown}. The object is pasted at *scale* x its "
                    f"own pixels into that image: at scale 1 an object of {W // 2}x{H // 2} px covers a quarter of "
                    "it, so a photo's object usually needs a small scale.")

        h_model.change(guarded(size_note), h_model, h_size, api_visibility="private", show_progress="hidden")
        demo.load(guarded(size_note), h_model, h_size, api_visibility="private", show_progress="hidden")

        for trigger in (h_object.change, h_x.release, h_y.release, h_scale.release, h_model.change):
            trigger(composite, [h_model, h_object, h_x, h_y, h_scale], h_composite, api_visibility="private",
                    show_progress="hidden")
        h_x.input(composite, [h_model, h_object, h_x, h_y, h_scale], h_composite, api_visibility="private",
                  show_progress="hidden", trigger_mode="always_last")
        h_y.input(composite, [h_model, h_object, h_x, h_y, h_scale], h_composite, api_visibility="private",
                  show_progress="hidden", trigger_mode="always_last")

        def place(name, obj, scale, evt: gr.SelectData):
            if not name or not obj:
                return gr.skip(), gr.skip(), gr.skip()
            model = state.store.load(name)
            H, W = shown_size(*model.real.shape[-2:])  # the composite is shown at this size
            x, y = evt.index[0] / W, evt.index[1] / H
            return round(x, 2), round(y, 2), composite(name, obj, x, y, scale)

        h_composite.select(guarded(place), [h_model, h_object, h_scale], [h_x, h_y, h_composite],
                           api_visibility="private", show_progress="hidden")

        def naive_and_mask(name, source, obj, x, y, scale, editor):
            if source == "draw the mask":
                return act.editor_parts(editor)
            naive, mask = act.compose_object(state, name, obj, x, y, scale)
            if not mask.any():
                raise act.UserError("the object covers no pixel of the image; move it inside or make it larger")
            return naive, mask > 0

        @guarded
        def harmonize(name, source, obj, x, y, scale, editor, seed):
            naive, mask = naive_and_mask(name, source, obj, x, y, scale, editor)
            raw, blended, out = act.harmonize(state, name, naive, mask, seed)
            return state.serve(raw), state.serve(blended), f"written to `{out}`"

        h_inputs = [h_model, h_source, h_object, h_x, h_y, h_scale, h_editor]
        h_go.click(harmonize, [*h_inputs, h_seed], [h_raw, h_blend, h_where], api_name="harmonize")

        @guarded
        def tune(name, source, obj, x, y, scale, editor, niter, seed):
            from ..core.image import from_numpy
            from ..storage.image_files import save_image

            naive, _ = naive_and_mask(name, source, obj, x, y, scale, editor)
            out = state.store.results_dir(name, "fine_tune_input")
            path = out / "naive.png"
            save_image(from_numpy(naive), path)
            job = act.fine_tune(state, name, path, niter, seed)
            return (f"Fine-tuning is job {job.id}; follow it in the Train tab. The fine-tuned model "
                    f"(`{state.store.name_of(job.out_dir)}`) appears in the lists when it is done."), job.id

        h_tune.click(tune, [*h_inputs, h_niter, h_seed], [h_tune_msg, t_job], api_name="fine_tune")

        @guarded
        def load_canvas(name):
            canvas, colours, swatch = act.paint_canvas(state, name)
            side = max(2, round(max(canvas.shape[:2]) / 16))  # a brush of about a sixteenth of the image
            editor = gr.update(value={"background": canvas, "layers": [], "composite": canvas},
                               brush=gr.Brush(colors=colours, default_color=colours[0], color_mode="fixed",
                                              default_size=side))
            return editor, swatch

        p_load.click(load_canvas, p_model, [p_canvas, p_swatch], api_name="paint_canvas")

        @guarded
        def paint(name, canvas, num, seed):
            files, out = act.paint_images(state, name, canvas, num, seed)
            return [state.serve(f) for f in files], f"written to `{out}`"

        p_go.click(paint, [p_model, p_canvas, p_num, p_seed], [p_gallery, p_where], api_name="paint")

        @guarded
        def superres(name, factor, seed):
            sr, bic, out = act.super_resolve(state, name, factor, seed)
            return state.serve(sr), state.serve(bic), f"written to `{out}`"

        r_go.click(superres, [r_model, r_factor, r_seed], [r_sr, r_bic, r_where], api_name="super_resolve")

        @guarded
        def animate(name, start, alpha, beta, frames, fps, seed, fmt):
            path = state.serve(act.animate(state, name, start, alpha, beta, frames, fps, seed, fmt))
            if fmt == "mp4":
                return gr.update(value=None, visible=False), gr.update(value=path, visible=True), path
            return gr.update(value=large_gif(path), visible=True), gr.update(value=None, visible=False), path

        a_go.click(animate, [a_model, a_start, a_alpha, a_beta, a_frames, a_fps, a_seed, a_fmt], [a_gif, a_video, a_file],
                   api_name="animate")

        @guarded
        def explore_full(name, x, y, seed, start):
            return shown_large(act.explore(state, name, x, y, seed, start, preview=False)), pad_image(x, y)

        @guarded
        def explore_preview(name, x, y, seed, start):
            return shown_large(act.explore(state, name, x, y, seed, start, preview=True)), pad_image(x, y)

        @guarded
        def explore_image(name, x, y, seed, start):
            return shown_large(act.explore(state, name, x, y, seed, start, preview=False))

        e_inputs = [e_model, e_x, e_y, e_seed, e_start]
        for slider in (e_x, e_y):
            slider.input(explore_preview, e_inputs, [e_image, e_pad], api_visibility="private", show_progress="hidden",
                         trigger_mode="always_last")
            slider.release(explore_full, e_inputs, [e_image, e_pad], api_visibility="private", show_progress="hidden")
        for trigger in (e_model.change, e_seed.change, e_start.change):
            # the image only: the point, so the pad, is the same. Gradio caches an image under a hash of its
            # pixels, so sending the same pad again rewrote the very file the page was fetching (a truncated
            # response: a broken pad on page loads that set the model, until a slider moved)
            trigger(explore_image, e_inputs, e_image, api_visibility="private", show_progress="hidden")

        def jump(name, seed, start, evt: gr.SelectData):
            x = evt.index[0] / (PAD_SIDE - 1) * 2 * PAD_RANGE - PAD_RANGE
            y = PAD_RANGE - evt.index[1] / (PAD_SIDE - 1) * 2 * PAD_RANGE
            x, y = round(x / 0.05) * 0.05, round(y / 0.05) * 0.05
            image, pad = explore_full(name, x, y, seed, start)
            return x, y, image, pad

        e_pad.select(guarded(jump), [e_model, e_seed, e_start], [e_x, e_y, e_image, e_pad], api_visibility="private",
                     show_progress="hidden")
        e_go.click(explore_full, e_inputs, [e_image, e_pad], api_name="explore")
    return demo


def _eroded(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:] &= mask[:-1]
    m[:-1] &= mask[1:]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m
