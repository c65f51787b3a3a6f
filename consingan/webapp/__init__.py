"""The local web app (``python -m consingan app``): train, sample, harmonize, paint, enlarge, animate
and explore from the browser. Needs the [app] extra (Gradio): ``pip install -e ".[app]"``.

Safe by default: it listens on 127.0.0.1 (another host is warned about), reads and writes only under
``--models_root`` and its own temporary upload folder (removed when the app ends), refuses model names
that leave the models root, limits uploads to 25 MB, and runs one training at a time (the others wait
in a queue).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def create(models_root: str | os.PathLike = "TrainedModels", device: str = "auto"):
    """(Gradio Blocks, AppState) for ``models_root``; the upload folder is made here. Gradio is
    imported after GRADIO_TEMP_DIR points into the upload folder, so that its uploads and cached
    results go there."""
    from .actions import AppState, new_upload_dir, remove_upload_dir
    from .store import ModelStore

    root = Path(models_root)
    root.mkdir(parents=True, exist_ok=True)
    upload = new_upload_dir()
    atexit.register(remove_upload_dir, upload)
    os.environ["GRADIO_TEMP_DIR"] = str(upload)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .errors import install_warning_hook
    from .ui import build

    install_warning_hook()
    state = AppState(ModelStore(root, device), upload, device=device)
    # The time estimate's measurement of this machine (a fraction of a second), before the first page asks.
    from ..config import Config
    from ..core.cost import measure_machine

    threading.Thread(target=measure_machine, args=(state.torch_device, Config.nfc), daemon=True).start()
    return build(state), state


def _can_listen(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be listened on now (as the server would: SO_REUSEADDR), else the error."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc
    return None


def check_port(host: str, port: int) -> None:
    """A UserError naming the port and a free one when ``port`` is taken (before anything is started)."""
    import errno

    from ..errors import UserError

    problem = _can_listen(host, port)
    if problem is None or getattr(problem, "errno", None) != errno.EADDRINUSE:
        return  # free, or another problem (a privileged port, an unknown host): the server says which
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if _can_listen(host, p) is None), None)
    hint = f"pass --port {free}" if free else "pass another --port"
    raise UserError(f"port {port} is taken (another program listens on {host}:{port}); {hint}")


def launch(models_root: str | os.PathLike = "TrainedModels", host: str = "127.0.0.1", port: int = 7860,
           device: str = "auto", quiet: bool = False) -> None:
    from ..signals import sigterm_as_interrupt
    from .actions import MAX_UPLOAD_MB

    if host not in LOOPBACK:
        print(f"warning: the app listens on {host}, so other machines can reach it; it has no login, and "
              "anyone who reaches it can train models and write files under --models_root (use "
              "--host 127.0.0.1 to keep it on this machine)", file=sys.stderr)
    check_port(host, port)  # Gradio would only say "Cannot find empty port", after starting everything
    from .ui import CSS

    demo, state = create(models_root, device)
    demo.queue(default_concurrency_limit=4)
    restore = sigterm_as_interrupt()  # SIGTERM ends the app as Ctrl-C does: Gradio closes its server
    try:
        # Gradio's own lines stay out (its "set share=True in launch()" is nothing a user of the command can
        # act on); the app says its one line once the server answers.
        demo.launch(server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb",
                    show_error=True, quiet=True, footer_links=["api"], ssr_mode=False, css=CSS,
                    prevent_thread_lock=True)
        if not quiet:
            print(f"ConSinGAN app: models in {state.store.root}; open "
                  f"http://{host if ':' not in host else f'[{host}]'}:{port} (Ctrl-C stops it)", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:  # before the server was up: Gradio's own loop did not see it
        demo.close()
    finally:
        restore()
        for line in state.queue.shutdown(timeout=60):  # a running training stops at a checkpoint
            print(line, file=sys.stderr)
