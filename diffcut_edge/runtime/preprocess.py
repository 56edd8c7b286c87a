"""Frames in, encoder batch out: BGR uint8 (or gray/BGRA/uint16/float) -> (B, 3, R, R).

The model was exported to take what the official code feeds the VAE: an RGB image in
[0, 1] resized bilinearly to R x R with PyTorch's ``F.interpolate(mode="bilinear",
align_corners=False)`` semantics and no antialiasing. OpenCV's INTER_LINEAR uses the
same sampling grid but is not exact: on uint8 frames its fixed-point weights are off
by up to ~1/255 against torch, and measured on float32 a 1000 -> 129 downscale was off
by 3e-5. So the resize here is written out as two-tap interpolation along each axis,
matching PyTorch to float32 rounding (tested against torch, up- and downscaling, odd
sizes). It runs on any Array API namespace (numpy, cupy, torch) alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.xp import device_of, from_host, get_xp, linear_taps, nearest_taps

# Float frames may stray this far outside [0, 1] from rounding before we call them wrong.
_FLOAT_RANGE_SLACK = 1e-3


def _lerp_take(x: Any, axis: int, i0: Any, i1: Any, w1: Any, xp: Any) -> Any:
    """``x[i0] + (x[i1] - x[i0]) * w1`` along ``axis`` of a 2-D array; float32 out.

    Gathers first and converts after, so an integer frame becomes float only at the
    output size; ``w1`` is shaped to broadcast along ``axis``.
    """
    low = xp.astype(xp.take(x, i0, axis=axis), xp.float32, copy=False)
    high = xp.astype(xp.take(x, i1, axis=axis), xp.float32, copy=False)
    high -= low
    high *= w1
    low += high
    return low


def _resize_hwc(image: Any, size: tuple[int, int], channels: Sequence[int] | None = None, scale: float = 1.0) -> Any:
    """Bilinear (torch semantics) resize of (H, W, C) to (h, w, len(channels)), picking channels.

    The image is handled as a 2-D (H, W*C) array: the column pass gathers whole pixels
    *and* reorders channels in one flat ``take`` (index x*C + c), and both passes run
    long contiguous loops. The pass that leaves the smaller intermediate goes first.
    """
    xp = get_xp(image)
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise DiffCutError(f"resize: output size must be positive, got {size}")
    in_h, in_w, c = image.shape
    channels = list(range(c)) if channels is None else list(channels)
    k = len(channels)
    y0, y1, wy = linear_taps(in_h, out_h, align_corners=False)
    x0, x1, wx = linear_taps(in_w, out_w, align_corners=False)
    chan = np.asarray(channels, dtype=np.int64)

    def column_pass(flat: Any, width_channels: int) -> Any:
        # flat: (rows, in_w * width_channels) with the original channels still interleaved.
        idx0 = (x0[:, None] * width_channels + chan[None, :]).ravel()
        idx1 = (x1[:, None] * width_channels + chan[None, :]).ravel()
        w = np.repeat(wx, k)[None, :]
        return _lerp_take(flat, 1, from_host(idx0, image), from_host(idx1, image), from_host(w, image), xp)

    def row_pass(flat: Any) -> Any:
        if in_h == out_h:  # torch's weights are exactly (1, 0) here
            return xp.astype(flat, xp.float32, copy=False)
        return _lerp_take(flat, 0, from_host(y0, image), from_host(y1, image), from_host(wy[:, None], image), xp)

    flat = xp.reshape(image, (in_h, in_w * c))
    if out_h * in_w <= in_h * out_w:
        out = column_pass(row_pass(flat), c)
    else:
        out = row_pass(column_pass(flat, c))
    if scale != 1.0:
        out *= scale  # out is always a new array here (the column pass gathers)
    return xp.reshape(out, (out_h, out_w, k))


def resize_bilinear(image: Any, size: tuple[int, int], *, scale: float = 1.0) -> Any:
    """Resize (H, W) or (H, W, C) to ``size`` = (height, width), as torch bilinear/align_corners=False.

    Args:
        image: an array of any Array API namespace, any real dtype (integers are read as their values).
        size: output (height, width).
        scale: factor applied to the result (e.g. 1/255 for uint8).
    Returns:
        float32 array of the same namespace and device, shape (height, width[, C]); a new array.
    """
    if image.ndim == 2:
        return _resize_hwc(image[:, :, None], size, scale=scale)[:, :, 0]
    return _resize_hwc(image, size, scale=scale)


def resize_nearest(labels: Any, size: tuple[int, int]) -> Any:
    """Resize a label map to ``size`` = (height, width) like torch ``F.interpolate(mode="nearest")``.

    PyTorch: src = min(floor(dst * in/out), in - 1), with the scale in float32.
    Any Array API namespace; keeps the dtype.
    """
    xp = get_xp(labels)
    in_h, in_w = labels.shape[:2]
    rows = from_host(nearest_taps(in_h, int(size[0])), labels)
    cols = from_host(nearest_taps(in_w, int(size[1])), labels)
    return xp.take(xp.take(labels, rows, axis=0), cols, axis=1)


# The largest frame taken, width x height: 100 MP is 300 MB of BGR pixels and ~1.2 GB as float (a 0.9 MB PNG
# can declare 30000², a Triton request can carry 16000²). DIFFCUT_MAX_IMAGE_PIXELS raises or lowers it.
MAX_FRAME_PIXELS = 100_000_000
MAX_PIXELS_ENV = "DIFFCUT_MAX_IMAGE_PIXELS"


def max_frame_pixels() -> int:
    """The largest frame (width x height) taken: :data:`MAX_FRAME_PIXELS`, or ``$DIFFCUT_MAX_IMAGE_PIXELS``."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_FRAME_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise DiffCutError(f"${MAX_PIXELS_ENV} must be a whole number of pixels, got {text!r}")
    return int(text)


def check_frame_size(width: int, height: int, what: str = "the image") -> None:
    """Refuse a frame over :func:`max_frame_pixels` (before anything allocates its pixels)."""
    limit = max_frame_pixels()
    if int(width) * int(height) > limit:
        raise DiffCutError(
            f"{what}: {width}x{height} pixels is over the limit of {limit} ({limit / 1e6:.0f} MP); "
            f"set ${MAX_PIXELS_ENV} to take larger images"
        )


def check_frame(image: Any) -> None:
    """Raise a DiffCutError unless ``image`` is a non-empty (H, W[, 1|3|4]) array within the pixel limit."""
    if image is None:
        raise DiffCutError("got no image (None): the frame could not be read (check the path or camera)")
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise DiffCutError(f"expected an image array (H, W[, C]), got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise DiffCutError(
            f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DiffCutError(f"got an empty image of shape {tuple(image.shape)}")
    check_frame_size(image.shape[1], image.shape[0], "the frame")


def _value_scale(image: Any) -> float:
    """Factor that maps the frame's values to [0, 1]: 1/255 for uint8, 1/65535 for uint16, 1 for float."""
    xp = get_xp(image)
    dtype = image.dtype
    if dtype == xp.uint8:
        return 1.0 / 255.0
    if dtype == getattr(xp, "uint16", None):
        return 1.0 / 65535.0
    if xp.isdtype(dtype, "real floating"):
        low, high = float(xp.min(image)), float(xp.max(image))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DiffCutError("the float image contains NaN or infinite values")
        if low < -_FLOAT_RANGE_SLACK or high > 1.0 + _FLOAT_RANGE_SLACK:
            raise DiffCutError(
                f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}] "
                f"(divide 0..255 images by 255, or pass uint8)"
            )
        return 1.0
    raise DiffCutError(f"unsupported image dtype {dtype}: use uint8, uint16 or float in [0, 1]")


def _channel_index(image: Any, channel_order: str) -> list[int]:
    """Indices that turn the frame's channels into R, G, B (gray is repeated, alpha dropped)."""
    if channel_order not in ("bgr", "rgb"):
        raise DiffCutError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return [0, 0, 0]
    return [2, 1, 0] if channel_order == "bgr" else [0, 1, 2]


def image_to_rgb_float(image: Any, channel_order: str = "bgr", size: tuple[int, int] | None = None) -> Any:
    """Any supported frame -> (H, W, 3) RGB float32 in [0, 1], optionally resized (torch bilinear).

    Accepts (H, W) gray, (H, W, 1), (H, W, 3) BGR (OpenCV's order; ``channel_order="rgb"``
    for RGB), (H, W, 4) BGRA (alpha dropped); uint8, uint16 or float in [0, 1]; any Array API namespace.
    ``size`` = (height, width) resizes in the same pass.
    """
    check_frame(image)
    scale = _value_scale(image)
    index = _channel_index(image, channel_order)
    xp = get_xp(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if size is not None:
        return _resize_hwc(image, size, channels=index, scale=scale)
    out = xp.astype(xp.take(image, from_host(np.asarray(index), image), axis=2), xp.float32)  # a new array
    if scale != 1.0:
        out *= scale
    return out


def frame_list(frames: Any, *, allow_single: bool = True) -> list[Any]:
    """One frame, a (B, H, W, C) array or a sequence of frames -> a non-empty list of frames.

    ``allow_single=False`` refuses a lone (H, W[, C]) array, for batch APIs where it is
    more likely a mistake than one frame.
    """
    if frames is None:
        raise DiffCutError("got no frames (None)")
    if hasattr(frames, "ndim"):
        if frames.ndim == 4:
            return [frames[i, ...] for i in range(frames.shape[0])]
        if allow_single:
            return [frames]
        raise DiffCutError(
            f"expected a list of frames or a (B, H, W, C) array, got shape {frames.shape}; "
            f"for one frame call the segmenter directly"
        )
    if isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        if len(frames) == 0:
            raise DiffCutError("got an empty list of frames")
        return list(frames)
    raise DiffCutError(f"expected a frame or a list of frames, got {type(frames).__name__}")


def preprocess(frames_bgr_uint8: Any, resolution: int, channel_order: str = "bgr") -> Any:
    """Frames -> the encoder's input batch (B, 3, R, R) float32 RGB in [0, 1].

    Args:
        frames_bgr_uint8: one frame or a sequence (or (B, H, W, C) array) of frames of
            any type :func:`image_to_rgb_float` accepts; frames may differ in size.
        resolution: R, the model folder's resolution.
    Returns:
        C-contiguous (B, 3, R, R) float32 in the frames' namespace and on their device.
    """
    if int(resolution) <= 0:
        raise DiffCutError(f"resolution must be positive, got {resolution}")
    frames = frame_list(frames_bgr_uint8)
    first = image_to_rgb_float(frames[0], channel_order, size=(resolution, resolution))
    xp = get_xp(first)
    batch = xp.empty((len(frames), 3, resolution, resolution), dtype=xp.float32, device=device_of(first))
    batch[0, ...] = xp.permute_dims(first, (2, 0, 1))
    for i, frame in enumerate(frames[1:], start=1):
        rgb = image_to_rgb_float(frame, channel_order, size=(resolution, resolution))
        batch[i, ...] = xp.permute_dims(rgb, (2, 0, 1))
    return batch
