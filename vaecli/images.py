"""PNG pictures: image grids written with zlib alone (no imaging library needed); videos as
PNG strips and animated GIFs (Pillow)."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from .errors import VaeError


def grid(images: np.ndarray, rows: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 picture (H', W', C) tiling the images row-major."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise VaeError(f"a grid needs uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n)) if rows is None else math.ceil(n / rows)
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return out


def write_png(path, picture: np.ndarray):
    """Write a uint8 (H, W) or (H, W, 1|3) array as an 8-bit PNG, atomically."""
    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[:, :, 0]
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] != 3):
        raise VaeError(f"write_png needs uint8 (H, W) or (H, W, 3), got {picture.dtype} {picture.shape}")
    height, width = picture.shape[:2]
    color_type = 0 if picture.ndim == 2 else 2  # grayscale or RGB
    rows = picture.reshape(height, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(height))  # filter type 0 per row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    from .runfile import atomic_write_bytes

    atomic_write_bytes(path, png)


def upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so small digits are visible."""
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def row_pairs(upper: np.ndarray, lower: np.ndarray, per_row: int, rows: int) -> np.ndarray:
    """Tiles of ``rows`` pairs of rows: ``per_row`` images of ``upper`` above as many of ``lower``."""
    return np.concatenate([np.concatenate([upper[r * per_row:(r + 1) * per_row], lower[r * per_row:(r + 1) * per_row]])
                           for r in range(rows)])


def video_strips(videos: np.ndarray) -> np.ndarray:
    """uint8 videos (N, T, C, H, W) -> one picture with a row of frames per video."""
    n, t = videos.shape[:2]
    return grid(videos.reshape(n * t, *videos.shape[2:]), rows=n)


def gif_bytes(videos: np.ndarray, scale: int = 2, frame_ms: int = 200) -> bytes:
    """uint8 videos (N, T, C, H, W) as an animated GIF (looping): frame t shows frame t of
    every video, tiled as a grid."""
    import io

    from PIL import Image

    frames = []
    for t in range(videos.shape[1]):
        picture = upscale(grid(videos[:, t]), scale)
        frames.append(Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return buffer.getvalue()


def write_samples(path, fmt: str, levels: np.ndarray, attrs: dict, scale: int = 2):
    """uint8 images (N, C, H, W) as a PNG grid, an .npz or an HDF5 file, written atomically at ``path``;
    videos (N, T, C, H, W) also as an animated GIF, and as PNG strips (a row of frames each)."""
    from . import runfile

    if fmt == "gif":
        if levels.ndim != 5:
            raise VaeError("a GIF is for videos: these are images (use png)")
        runfile.atomic_write_bytes(path, gif_bytes(levels, scale))
    elif fmt == "png":
        write_png(path, upscale(video_strips(levels) if levels.ndim == 5 else grid(levels), scale))
    elif fmt == "npz":
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=levels, temperature=attrs.get("temperature", 1.0))
        runfile.atomic_write_bytes(path, buffer.getvalue())  # at the path exactly (numpy would add .npz)
    elif fmt == "h5":
        with runfile.atomic_h5(path) as f:
            d = f.create_dataset("images", data=levels, compression="gzip")
            for k, v in attrs.items():
                d.attrs[k] = v
    else:
        raise VaeError(f"unknown sample format {fmt!r}; use png, gif, npz or h5")
