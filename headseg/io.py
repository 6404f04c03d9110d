"""Files in and out: input listing, atomic writes (nothing half-written survives a kill) and image reading."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it in place.

    A process killed mid-write leaves the previous version of ``path`` intact: the rename is
    atomic on POSIX file systems.

    Args:
        path: Destination file; its folder is created if missing.
        write: Called once with a binary file object opened for writing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON."""
    data = json.dumps(obj, indent=indent).encode()
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def list_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The files that image files, folders and glob patterns name, as the tools take them.

    One listing serves ``tools/predict.py`` and :mod:`headseg.ray_inference`, so both engines
    process the same files for the same command line.

    Args:
        inputs: Files (kept whatever their extension: reading them says if they are not
            images), folders (their images and videos, not recursive) and glob patterns.

    Returns:
        ``(files, problems)``: the paths as given or matched (folder and glob matches sorted),
        each file once however many inputs name it (compared as absolute paths), and one
        ``"<input>: <why>"`` line for each input that names no file.
    """
    files: dict[str, Path] = {}
    problems: list[str] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            problems += [] if found else [f"{item}: folder holds no images or videos"]
        elif path.is_file():
            found = [path]
        elif any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            problems += [] if found else [f"{item}: pattern matches no file"]
        else:
            found, problems = [], problems + [f"{item}: no such file or folder"]
        for p in found:
            files.setdefault(os.path.abspath(p), p)
    return list(files.values()), problems


def read_image(path: str | Path) -> "np.ndarray":
    """Read an image file as an HxWx3 uint8 **RGB** array, honouring EXIF orientation.

    Grayscale, RGBA (alpha dropped), palette, CMYK and 16-bit images are all converted to 8-bit
    RGB. 16-bit data is scaled by 1/257 (65535 -> 255), not clipped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"image file {path} is empty (0 bytes)")
    return _decode(path, path)


def decode_image(data: bytes, name: str = "<bytes>") -> "np.ndarray":
    """:func:`read_image` for a file's bytes already in memory (e.g. ``ray.data.read_binary_files``).

    Args:
        data: The encoded file (JPEG, PNG...).
        name: Where the bytes came from, for error messages.

    Returns:
        ``(H, W, 3)`` uint8 RGB, decoded exactly as :func:`read_image` decodes the file.

    Raises:
        ValueError: the bytes are empty, truncated or not an image.
    """
    import io  # noqa: PLC0415

    if not data:
        raise ValueError(f"image file {name} is empty (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source: "Path | BinaryIO", name: str | Path) -> "np.ndarray":
    import numpy as np  # noqa: PLC0415
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(source) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"image file {name} cannot be decoded ({e}); is it a complete image?") from None
