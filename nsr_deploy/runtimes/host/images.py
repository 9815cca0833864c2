"""Image files in and out (Pillow), shaped for a model: uint8, grey HxW or colour HxWx3.

Whatever the file holds is converted to what the model takes, with a warning when information
changes (16-bit depth, grey <-> colour, frames of an animation or pages of a TIFF beyond the first).
An alpha channel is kept aside and upscaled bicubic. An input is opened once, as a regular file of a
bounded size (a FIFO or a device is refused at once), and Pillow decodes from that descriptor.

Outputs are written to a temp file beside the final one, then renamed over it. A temp file is named
``.NAME.nsr-partial-HOST-PID-XXXXXXXX.EXT`` (never longer than the file system allows, however long
NAME is): a run killed before the rename leaves it hidden and recognisable, folder scans skip it, and
the next run writing to that folder removes it once its process is gone (:func:`stale_partials`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import struct
import tempfile
import warnings as warnings_module
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nsr_deploy.core.budgets import PIXELS_ENV, check_pixels, max_pixels
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import open_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# bytes an image file may have per budgeted pixel: uncompressed 16-bit RGBA is 8, the rest is room for
# metadata and a few more pages or frames (only the first is decoded)
IMAGE_BYTES_PER_PIXEL = 16
IMAGE_BYTES_SLACK = 64 << 20


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8, HxW (grey model) or HxWx3 (colour model)
    alpha: np.ndarray | None = None  # uint8 HxW, if the file had one
    source_mode: str = ""
    warnings: list[str] = field(default_factory=list)


def _to_8bit(img: Image.Image, warnings: list[str]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        warnings.append(f"{img.mode} ({'16' if hi > 255 else '32'}-bit) input converted to 8-bit")
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max() <= 1.0 else 255.0
        warnings.append("floating-point input converted to 8-bit")
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGB;16", "RGBA;16", "BGR;16"):
        warnings.append(f"{img.mode} input converted to 8-bit")
        return img.convert("RGB")
    return img


def _sixteen_bit_source(opened: Image.Image) -> bool:
    """Pillow decodes 16-bit RGB(A) straight to 8-bit ``RGB``; only the decoder's raw mode tells."""
    return any(";16" in str(tile[3]) for tile in getattr(opened, "tile", None) or [] if len(tile) > 3)


def image_byte_cap() -> int:
    """The largest image file read, in bytes: it follows the pixel budget."""
    return IMAGE_BYTES_SLACK + IMAGE_BYTES_PER_PIXEL * max_pixels()


def _frame_count(opened: Image.Image) -> int:
    """Frames of an animation (GIF, APNG, WebP) or pages of a TIFF; a camera's MPO JPEG is one photo
    (its further images are previews), like the JPEG readers that ignore them."""
    if opened.format == "MPO":
        return 1
    try:
        return max(1, int(getattr(opened, "n_frames", 1)))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, TypeError):
        return 1  # a broken later frame: the first one is still decoded (or refused) below


def read_image(path: str | Path, channels: int) -> LoadedImage:
    """Read any Pillow-readable image and shape it for a ``channels``-channel model.

    The file is opened once (a regular file under :func:`image_byte_cap`); its size is read from the
    header and checked against the pixel budget before any pixel is decoded.
    """
    path = Path(path)
    budget = max_pixels()
    source, _ = open_regular(path, image_byte_cap(), "picture")
    # our budget replaces Pillow's bomb limit (a fixed 179 Mpx that --max-pixels could not raise): the
    # header's size is checked below, before anything is decoded
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with source, warnings_module.catch_warnings():
            warnings_module.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:  # lazy: only the header has been read
                check_pixels(*opened.size, str(path))
                frames = _frame_count(opened)
                opened.seek(0)
                deep = _sixteen_bit_source(opened)
                img = ImageOps.exif_transpose(opened)
                img.load()
    except Image.DecompressionBombError:
        raise NSRError(f"{path}: its header declares more pixels than the pixel budget "
                       f"({budget / 1e6:g} Mpx); raise it with --max-pixels or {PIXELS_ENV}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error,
            IndexError, KeyError, TypeError, ZeroDivisionError) as e:  # what Pillow's decoders raise on bad data
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise NSRError(f"{path}: not a readable image ({why})") from None
    except MemoryError:
        raise NSRError(f"{path}: not enough memory to decode it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit  # other readers (calibration, bench) keep Pillow's guard
    warnings: list[str] = [f"{frames} frames: only the first is restored"] if frames > 1 else []
    mode = img.mode
    if deep and img.mode in ("RGB", "RGBA"):
        warnings.append(f"16-bit {img.mode} input converted to 8-bit")
    img = _to_8bit(img, warnings)
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA" if img.mode != "LA" else "LA")
        alpha = np.asarray(img.getchannel("A")).copy()
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    grey_file = img.mode in ("L", "1")
    if channels == 3:
        if grey_file:
            warnings.append("grey image given to a colour model: converted to RGB")
        img = img.convert("RGB")
    elif channels == 1:
        if not grey_file:
            warnings.append("colour image given to a grey model: converted to grey (ITU-R 601 luma)")
        img = img.convert("L")
    else:
        raise NSRError(f"models with {channels} channels are not supported by image I/O")
    return LoadedImage(np.asarray(img).copy(), alpha, mode, warnings)


def upscale_alpha(alpha: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if alpha.shape == size_hw:
        return alpha
    return np.asarray(Image.fromarray(alpha).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- partial outputs ------------------------------------------------------------------------------
PARTIAL_TAG = "nsr-partial"
RANDOM_CHARS = 8  # what tempfile.mkstemp puts between its prefix and suffix
_PARTIAL = re.compile(rf"\..*\.{PARTIAL_TAG}-(?P<host>[0-9a-f]{{6}})-(?P<pid>[0-9]{{1,10}})-[a-z0-9_]{{{RANDOM_CHARS}}}"
                      r"(\.[A-Za-z0-9]{1,8})?", re.DOTALL)


def host_tag() -> str:
    """This machine, in 6 hex digits: a partial file on a shared disk names the machine of its process."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def process_alive(pid: int, on_this_host: bool = True) -> bool:
    """Whether process ``pid`` may still be running. Another machine's process, this process and
    any pid that cannot be judged count as alive: only what is surely orphaned is ever removed."""
    if not on_this_host or pid == os.getpid() or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def partial_prefix(path: Path) -> str:
    """The temp name's part before mkstemp's random characters, NAME cut so that the whole temp name
    fits the file system's name limit (the final name is the user's; the temp name must never be the
    one that is too long)."""
    tag = f".{PARTIAL_TAG}-{host_tag()}-{os.getpid()}-"
    room = name_max(path.parent) - len(os.fsencode("." + tag + path.suffix)) - RANDOM_CHARS
    return "." + os.fsdecode(os.fsencode(path.name)[:max(room, 0)]) + tag


def is_partial(name: str) -> bool:
    """Whether ``name`` is a temp file of :func:`write_image` (any process, any machine)."""
    return _PARTIAL.fullmatch(name) is not None


def stale_partials(folder: Path) -> list[Path]:
    """Temp files of :func:`write_image` in ``folder`` whose process is gone (killed before its rename).
    Only plain files named so, of this machine's processes: a link or another machine's file stays."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _PARTIAL.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not process_alive(
                int(match["pid"]), match["host"] == host_tag()):
            found.append(Path(entry.path))
    return found


def write_reason(e: OSError) -> str:
    """Why a write failed, in words (a full disk, a read-only or forbidden place)."""
    return {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large for the file system", errno.ENAMETOOLONG: "file name too long",
            }.get(e.errno) or e.strerror or type(e).__name__


def write_error(path: Path, e: OSError) -> NSRError:
    """A failed write as one line with the real reason."""
    return NSRError(f"{path}: cannot write it ({write_reason(e)})")


def write_image(path: str | Path, pixels: np.ndarray, alpha: np.ndarray | None = None) -> list[str]:
    """Write atomically (temp file, then rename); returns warnings. Format from the suffix."""
    path = Path(path)
    warnings = []
    img = Image.fromarray(pixels)
    suffix = path.suffix.lower()
    if alpha is not None:
        if suffix in (".jpg", ".jpeg", ".bmp", ".ppm", ".pgm"):
            warnings.append(f"{suffix} cannot hold alpha: alpha channel dropped")
        else:
            img.putalpha(Image.fromarray(upscale_alpha(alpha, pixels.shape[:2])))
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise NSRError(f"{path}: unknown image format {suffix!r}")
    params = {"quality": 95} if fmt == "JPEG" else {}
    try:
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path), suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **params)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; outputs follow the umask
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return warnings
