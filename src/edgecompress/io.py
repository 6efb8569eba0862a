"""Atomic file output, safe checkpoint loading, and image decoding with one-line errors.

Every file a stage writes goes through `atomic_write`: the content is written to a temporary file in
the same directory and renamed over the target, so a run killed mid-write leaves the previous file
intact (rename is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from edgecompress import EdgecompressError, first_line


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside `path`, for writers that take a path (exporters, profilers); on
    success the file is renamed over `path`, on error deleted.

    Args:
        path: final destination.
        suffix: of the temporary name (some writers pick the format from it, e.g. ".onnx").
    Yields:
        The temporary file's path (the file exists, empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp_name
        publish(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it over `path`, on error delete it.

    Args:
        path: final destination.
        mode: "wb" or "w".
    Yields:
        The open temporary file object.
    """
    with atomic_path(path) as tmp_name, open(tmp_name, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def publish(tmp_path: str | Path, path: str | Path) -> None:
    """Give a finished temporary file normal permissions (mkstemp makes 0600) and rename it over
    `path` (atomic within one file system)."""
    os.chmod(tmp_path, 0o666 & ~_umask())
    os.replace(tmp_path, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside `path` to fill; on success it replaces `path` (the previous
    directory is removed only after the new one is in place), on error it is deleted and `path` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    os.chmod(path, 0o777 & ~_umask())
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write `text` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgecompressError(f"{path}: not valid JSON ({exc})") from None


def save_torch(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically. `obj` must hold only tensors and plain Python types so that it
    loads back with `weights_only=True`."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


class UnsafePickleError(EdgecompressError):
    """A torch file that holds pickled objects other than tensors and containers (a whole model, code):
    `load_torch` refuses it rather than unpickle it."""


def load_torch(path: str | Path, what: str = "checkpoint") -> Any:
    """Load a file written by `save_torch` with `weights_only=True` (no code is unpickled).

    Raises:
        UnsafePickleError: naming the file when it holds objects that are not plain tensors/containers.
        EdgecompressError: naming the file when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: {what} not found (run the stage that produces it first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        cause, unsafe = _load_cause(exc)
        error = UnsafePickleError if unsafe else EdgecompressError
        raise error(f"{path}: cannot load {what} safely with weights_only=True ({cause})") from None


def _load_cause(exc: BaseException) -> tuple[str, bool]:
    """(the reason torch gives, whether it refused unsafe objects), without its advice to retry with
    weights_only=False (the unsafe thing: its first lines say so and would hide the cause, e.g.
    'Unsupported global: GLOBAL posix.system'). A file that is not a torch pickle at all (truncated,
    another format) also fails inside torch's weights-only unpickler: that is corruption, not unsafety."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    blocked = [line for line in lines  # "Unsupported global: GLOBAL x", "... unsupported GLOBAL posix.system ..."
               if "unsupported global" in line.lower() or "was not an allowed global" in line]
    if blocked:
        cause = blocked[0].split("WeightsUnpickler error:")[-1].split(" was not an allowed global")[0].strip()
        return (f"{cause[:200]}; it holds objects other than tensors and containers, and only code you trust "
                "may be unpickled"), True
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].splitlines()
        detail = next((line.strip() for line in after
                       if line.strip() and not line.strip().startswith("Check the documentation")), "")
        return f"not a torch file of tensors: {(detail or first_line(exc))[:200]}", False
    return first_line(exc), False


def read_image(path: str | Path) -> Any:
    """Decode an image file as an RGB `PIL.Image` (fully loaded, file closed).

    Raises:
        EdgecompressError: naming the file when it is unreadable, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, ValueError, ...;
        # ImportError too: ultralytics patches Image.open (HEIF plugin)
        raise EdgecompressError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def file_size_mb(path: str | Path) -> float:
    """Size of a file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6
