"""The page's image inputs, which never decode an upload before its size is checked.

Gradio's own Image and ImageEditor open and convert every upload while preparing a handler's input
(a small PNG that claims 12000x12000 pixels grows to gigabytes there), and a file that is not an image
fails with Gradio's multi-line "could not preprocess" error. The inputs made here read the upload's size
from its header first (storage.image_files.image_size, held to MAX_IMAGE_PIXELS) and show the app's
one-line message when it is too large; an image input with ``type="filepath"`` hands the uploaded file's
path to the handler untouched, which reads it with the one image reader (and says in one line when it
is not an image).
"""
from __future__ import annotations

from io import BytesIO
from typing import Any

import gradio as gr

from ..errors import UserError


def _check_upload(source: Any) -> None:
    """A too-large upload (a path or the bytes of a file) as gr.Error with the app's message."""
    from ..storage.image_files import check_image_size, image_size

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            import warnings

            from PIL import Image

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(BytesIO(bytes(source))) as im:
                        size = im.size
            except Image.DecompressionBombError:
                size = (10**6, 10**6)  # over twice Pillow's limit: certainly over ours
            except Exception:  # noqa: BLE001 - not an image: Gradio's reader says so
                return
            check_image_size(*size, what="the image")
        elif source:
            image_size(str(source), "the image")
    except UserError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def _path_of(file: Any) -> str | None:
    return getattr(file, "path", None) if file is not None and not isinstance(file, (bytes, bytearray)) else None


def checked_image(**kwargs) -> gr.Image:
    """gr.Image whose upload is size-checked from its header; ``type="filepath"``: the path, never re-encoded.
    (The methods are replaced on the instance: a subclass would make Gradio write a .pyi stub beside this file.)"""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        if payload is None or (payload.url or "").startswith("data:"):
            return preprocess(payload)  # a pasted image: Gradio decodes the data URL itself
        path = _path_of(payload)
        if path is None:
            return preprocess(payload)
        if image.type == "filepath":
            return str(path)  # the handler reads it through storage.image_files (size checked, one-line errors)
        _check_upload(path)
        return preprocess(payload)

    image.preprocess = checked
    return image


def checked_image_editor(**kwargs) -> gr.ImageEditor:
    """gr.ImageEditor whose background, layers and composite are size-checked before Gradio decodes them."""
    editor = gr.ImageEditor(**kwargs)
    convert = editor.convert_and_format_image

    def checked(file, flatten_on_white: bool = False):
        if file is not None:
            _check_upload(file if isinstance(file, (bytes, bytearray, memoryview)) else _path_of(file))
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked
    return editor
