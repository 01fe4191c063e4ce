"""Reading and writing video object segmentation data in the DAVIS layout.

::

    root/JPEGImages/<seq>/00000.jpg ...
    root/Annotations/<seq>/00000.png ...

Annotations are palette ("P" mode) PNGs whose pixel values are object ids: 0 is
background, 255 is void (ignored in scoring), anything else an object. The ids are the
palette *indices*; the colours are only for display. This is also the layout used by
the SAM 2 evaluation scripts for DAVIS 2017, MOSE and SA-V (whose annotations may be
sparse: an annotation file exists only for some frames and is matched to its frame by
file stem). The official DAVIS download adds a resolution level
(``JPEGImages/480p/<seq>``): ``480p`` is read when present (``resolution=None``, the
default); pass another level (``"Full-Resolution"``) or ``""`` for none explicitly.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .metrics import VOID_ID

IMAGE_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


DAVIS_RESOLUTION = "480p"  # the level the official DAVIS download evaluates on


def _level(root, resolution: str | None) -> str | None:
    """The resolution level to read: the one asked for, else ``480p`` when the root has
    the official download's ``JPEGImages/480p`` and ``Annotations/480p`` folders, so a
    DAVIS download works as it unpacks."""
    if resolution is not None:
        return resolution or None
    root = Path(root)
    if (root / IMAGE_DIR / DAVIS_RESOLUTION).is_dir() and (root / ANNOTATION_DIR / DAVIS_RESOLUTION).is_dir():
        return DAVIS_RESOLUTION
    return None


def _image_dir(root, seq: str | None = None, resolution: str | None = None) -> Path:
    d = Path(root) / IMAGE_DIR
    level = _level(root, resolution)
    if level:
        d = d / level
    return d if seq is None else d / seq


def _annotation_dir(root, seq: str | None = None, resolution: str | None = None) -> Path:
    d = Path(root) / ANNOTATION_DIR
    level = _level(root, resolution)
    if level:
        d = d / level
    return d if seq is None else d / seq


def list_sequences(root, resolution: str | None = None, imageset=None) -> list[str]:
    """Sequences that have both frames and annotations, sorted by name.

    ``imageset`` is an optional text file with one sequence name per line (DAVIS
    ``ImageSets/2017/val.txt``); its order is kept and every listed sequence must exist.
    """
    images = _image_dir(root, resolution=resolution)
    annots = _annotation_dir(root, resolution=resolution)
    if not images.is_dir():
        raise FileNotFoundError(f"no {IMAGE_DIR} folder under {images.parent}")
    if not annots.is_dir():
        raise FileNotFoundError(f"no {ANNOTATION_DIR} folder under {annots.parent}")
    if imageset is not None:
        names = [ln.strip() for ln in Path(imageset).read_text().splitlines() if ln.strip()]
        missing = [n for n in names if not (images / n).is_dir() or not (annots / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"sequences listed in {imageset} but not found under {root}: {missing}")
        return names
    return sorted(p.name for p in images.iterdir() if p.is_dir() and (annots / p.name).is_dir())


def load_frames(root, seq: str, resolution: str | None = None) -> list[Path]:
    """Frame image paths of a sequence in natural (numeric) order."""
    d = _image_dir(root, seq, resolution)
    if not d.is_dir():
        raise FileNotFoundError(f"no frames folder {d}")
    frames = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not frames:
        raise FileNotFoundError(f"no frame images in {d}")
    return frames


def annotation_paths(root, seq: str, resolution: str | None = None) -> dict[int, Path]:
    """Annotation PNG of each annotated frame: ``{frame index: path}``, frame order.

    Annotations are matched to frames by file stem, so sparse annotations work.
    """
    d = _annotation_dir(root, seq, resolution)
    if not d.is_dir():
        raise FileNotFoundError(f"no annotations folder {d}")
    index = {p.stem: i for i, p in enumerate(load_frames(root, seq, resolution))}
    out: dict[int, Path] = {}
    for p in d.iterdir():
        if p.suffix.lower() != ".png":
            continue
        if p.stem not in index:
            raise FileNotFoundError(f"annotation {p} has no matching frame in {_image_dir(root, seq, resolution)}")
        out[index[p.stem]] = p
    return dict(sorted(out.items()))


def load_annotation(path) -> np.ndarray:
    """Object-id map (uint8 H x W) of an annotation PNG.

    Palette and greyscale PNGs give their stored indices directly. An RGB(A) file (an
    annotation re-saved by an image editor) is mapped back through the DAVIS palette;
    a colour that is not in the palette raises ``ValueError``.
    """
    with Image.open(path) as im:
        if im.mode in ("P", "L"):
            return np.array(im, dtype=np.uint8)
        if im.mode == "1":
            return np.array(im, dtype=np.uint8)
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            a = np.array(im)
            if a.min() < 0 or a.max() > 255:
                raise ValueError(f"{path}: label values {a.min()}..{a.max()} do not fit in 0..255")
            return a.astype(np.uint8)
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return _rgb_to_ids(rgb, path)


def _rgb_to_ids(rgb: np.ndarray, path) -> np.ndarray:
    pal = davis_palette().reshape(256, 3).astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(c): i for i, c in enumerate(pal_codes)}  # palette colours are all distinct
    uniq, inverse = np.unique(codes, return_inverse=True)
    try:
        mapped = np.array([lut[int(c)] for c in uniq], dtype=np.uint8)
    except KeyError as err:
        c = int(err.args[0])
        raise ValueError(f"{path}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not a DAVIS palette colour") from None
    return mapped[inverse].reshape(rgb.shape[:2])


def object_masks(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Boolean mask of every object in an id map (background 0 and void 255 left out)."""
    ids = np.asarray(ids)
    return {int(i): ids == i for i in np.unique(ids) if i not in (0, VOID_ID)}


def first_annotations(root, seq: str, resolution: str | None = None) -> dict[int, tuple[int, np.ndarray]]:
    """For every object, the first annotated frame where it appears and its mask there.

    Returns ``{object id: (frame index, bool H x W mask)}`` sorted by object id; the
    frame index counts all frames of the sequence (``load_frames`` order).
    """
    found: dict[int, tuple[int, np.ndarray]] = {}
    for t, path in annotation_paths(root, seq, resolution).items():
        for oid, mask in object_masks(load_annotation(path)).items():
            if oid not in found:
                found[oid] = (t, mask)
    return dict(sorted(found.items()))


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: 768 uint8 values (256 RGB triplets).

    Colour of index i: the bits of i are dealt out in turn to red, green and blue,
    starting from each channel's most significant bit (0 black, 1 dark red, 2 dark
    green, ..., 255 = (224, 224, 192)).
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        rgb = [0, 0, 0]
        v = i
        for bit in range(7, -1, -1):  # output bit position, high to low
            for ch in range(3):
                rgb[ch] |= (v & 1) << bit
                v >>= 1
        pal[i] = rgb
    return pal.reshape(-1)


def write_annotation(path, ids) -> Path:
    """Write an object-id map (uint8 H x W) as a DAVIS palette PNG; creates folders."""
    a = np.asarray(ids)
    if a.ndim != 2:
        raise ValueError(f"an annotation must be 2-D, got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"object ids must lie in 0..255, got {a.min()}..{a.max()}")
        a = a.astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(a))  # mode "L"
    im.putpalette(davis_palette().tobytes())  # turns it into mode "P", indices unchanged
    im.save(path, format="PNG")
    return path


def mask_to_box(mask) -> tuple[float, float, float, float]:
    """Tight box (x1, y1, x2, y2) of a boolean mask with exclusive max (x2 = max x + 1).

    Note: SAM 2's own evaluation helpers use the inclusive max; this follows the
    project's box convention (``tracker.mask_box``). Raises ``ValueError`` on an empty mask.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    ys = np.flatnonzero(m.any(axis=1))
    if ys.size == 0:
        raise ValueError("cannot derive a box from an empty mask")
    xs = np.flatnonzero(m.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def mask_to_point(mask) -> tuple[float, float]:
    """A click well inside the object: the pixel (x, y) farthest from the background.

    Exact Euclidean distance transform with the image border counted as background (so
    a cut-off object gets its click away from the image edge). Ties go to the first
    pixel in row-major order, so the result is deterministic. Coordinates are pixel
    indices, as SAM point prompts expect (the prompt encoder adds the 0.5 itself).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if not m.any():
        raise ValueError("cannot derive a point from an empty mask")
    padded = np.pad(m.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


PROMPT_KINDS = ("mask", "box", "point")  # prompts derived from an annotated mask


def prompt_kwargs(kind: str, mask: np.ndarray) -> dict:
    """``Tracker.add_prompt`` arguments (also the demo's prompt messages) for a ``mask``, its
    tight ``box`` or a ``point``: one positive click at its pixel farthest from the border."""
    if kind == "mask":
        return {"mask": mask}
    if kind == "box":
        return {"box": mask_to_box(mask)}
    if kind == "point":
        x, y = mask_to_point(mask)
        return {"points": [[x, y]], "labels": [1]}
    raise ValueError(f"unknown prompt kind {kind!r} (one of {', '.join(PROMPT_KINDS)})")
