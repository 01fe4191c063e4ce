"""Readers of the public video segmentation layouts, behind one small interface.

The clip sampler asks a reader for: its sequences, each one's frame count, which
frames are annotated, frames (RGB uint8) and object-id maps (0 background). Layouts:

* DAVIS 2017: ``JPEGImages/[480p/]<seq>/*.jpg``, ``Annotations/[480p/]<seq>/*.png``
  (palette PNGs, 255 = void), every frame annotated.
* YouTube-VOS 2019 and MOSE: the same folders plus ``meta.json`` (MOSE: ``meta_train.json``
  or ``meta_valid.json``, in the split folder or beside it), ``{"videos": {<seq>:
  {"objects": {...}}}}``, which lists the videos read (without one: every folder). YouTube-VOS
  annotates every 5th frame; when ``JPEGImages`` holds all frames, the others are
  unannotated and carry no loss.
* SA-V: per video ``<vid>.mp4`` (or a folder of its frames) and ``<vid>_manual.json``
  whose ``masklet`` lists, per annotated frame (every 4th frame of the 24 fps video),
  one COCO RLE per object (decoded with pycocotools). Objects that overlap are drawn in
  masklet order, a later one over an earlier one.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..evaluation import davis

SAV_ANNOTATION_EVERY = 4  # SA-V masklets: 6 fps annotations of 24 fps videos


class VideoSet:
    """Base reader. ``void``: the id that marks unscored pixels (None: no such id)."""

    layout = "?"
    void: int | None = None

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.sequences: list[str] = []

    def num_frames(self, seq: str) -> int:
        raise NotImplementedError

    def annotated(self, seq: str) -> list[int]:
        """Indices of the annotated frames, ascending."""
        raise NotImplementedError

    def frames(self, seq: str, indices: list[int]) -> np.ndarray:
        """``len(indices) x H x W x 3`` uint8 RGB."""
        raise NotImplementedError

    def ids(self, seq: str, index: int) -> np.ndarray:
        """Object-id map of an annotated frame (H x W, 0 = background)."""
        raise NotImplementedError


class DavisSet(VideoSet):
    """DAVIS layout (``resolution``: as ``evaluation/davis.py``; None picks 480p if present)."""

    layout = "davis"
    void = 255

    def __init__(self, root, resolution: str | None = None, sequences: list[str] | None = None) -> None:
        super().__init__(root)
        self.resolution = resolution
        self.sequences = sequences if sequences is not None else davis.list_sequences(self.root, resolution)
        self._frames = {s: davis.load_frames(self.root, s, resolution) for s in self.sequences}
        self._ann = {s: davis.annotation_paths(self.root, s, resolution) for s in self.sequences}

    def num_frames(self, seq):
        return len(self._frames[seq])

    def annotated(self, seq):
        return sorted(self._ann[seq])

    def frames(self, seq, indices):
        return np.stack([np.asarray(Image.open(self._frames[seq][i]).convert("RGB")) for i in indices])

    def ids(self, seq, index):
        return davis.load_annotation(self._ann[seq][index])


def find_meta(root: Path) -> Path | None:
    """``meta.json`` (YouTube-VOS) or ``meta_*.json`` (MOSE) in ``root`` or its parent."""
    for d in (root, root.parent):
        for name in ("meta.json", "meta_train.json", "meta_valid.json"):
            if (d / name).is_file():
                return d / name
    return None


class YouTubeVOSSet(DavisSet):
    """YouTube-VOS 2019 / MOSE: DAVIS folders (no resolution level), the videos listed by
    the meta file when there is one (else every folder with frames and annotations)."""

    layout = "ytvos"

    def __init__(self, root, meta: str | Path | None = None, sequences: list[str] | None = None) -> None:
        root = Path(root)
        meta_path = Path(meta) if meta else find_meta(root)
        have = davis.list_sequences(root, resolution="")
        if meta_path is not None and sequences is None:
            try:
                videos = json.loads(meta_path.read_text())["videos"]
                if not isinstance(videos, dict):
                    raise TypeError("'videos' is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{meta_path} is not a YouTube-VOS/MOSE meta file "
                                 f"({{\"videos\": {{<name>: {{\"objects\": ...}}}}}}): {exc}") from exc
            sequences = sorted(v for v in videos if v in set(have))
            if not sequences:
                raise ValueError(f"none of the {len(videos)} videos in {meta_path} has frames and annotations "
                                 f"under {root}")
        self.meta_path = meta_path
        super().__init__(root, resolution="", sequences=sequences if sequences is not None else have)


class SAVSet(VideoSet):
    """SA-V: ``<vid>_manual.json`` masklets with the video beside it (mp4 or a frame folder)."""

    layout = "sav"

    def __init__(self, root, sequences: list[str] | None = None) -> None:
        super().__init__(root)
        self._json = {p.name[: -len("_manual.json")]: p for p in sav_annotation_files(self.root)}
        if not self._json:
            raise FileNotFoundError(f"no SA-V <video>_manual.json files under {self.root}")
        self.sequences = sequences if sequences is not None else sorted(self._json)
        self._masklets: dict[str, list] = {}
        self._source: dict[str, Path] = {}
        self._count: dict[str, int] = {}
        self._every: dict[str, int] = {}
        self._files: dict[str, list[Path]] = {}
        for seq in self.sequences:
            self._open(seq)

    def _open(self, seq: str) -> None:
        path = self._json[seq]
        try:
            masklet = json.loads(path.read_text())["masklet"]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not an SA-V annotation file with a 'masklet' list: {exc}") from exc
        folder = next((d for d in (path.parent / seq, self.root / "JPEGImages_24fps" / seq, self.root / "JPEGImages" / seq)
                       if d.is_dir()), None)
        if folder is not None:
            files = sorted((p for p in folder.iterdir() if p.suffix.lower() in davis.IMAGE_SUFFIXES),
                           key=davis._natural_key)
            self._source[seq], self._files[seq], count = folder, files, len(files)
        else:
            video = path.parent / f"{seq}.mp4"
            if not video.is_file():
                raise FileNotFoundError(f"no frames for {path}: expected {video} or a folder of its frames")
            cap = cv2.VideoCapture(str(video))
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
            self._source[seq] = video
        if count >= (len(masklet) - 1) * SAV_ANNOTATION_EVERY + 1:
            every = SAV_ANNOTATION_EVERY
        elif count == len(masklet):  # frames extracted at the annotation rate
            every = 1
        else:
            raise ValueError(f"{path}: {len(masklet)} annotated frames do not fit {count} frames of "
                             f"{self._source[seq]} (expected one every {SAV_ANNOTATION_EVERY})")
        self._masklets[seq], self._count[seq], self._every[seq] = masklet, count, every

    def num_frames(self, seq):
        return self._count[seq]

    def annotated(self, seq):
        return [k * self._every[seq] for k in range(len(self._masklets[seq]))]

    def frames(self, seq, indices):
        src = self._source[seq]
        if src.is_dir():
            return np.stack([np.asarray(Image.open(self._files[seq][i]).convert("RGB")) for i in indices])
        cap = cv2.VideoCapture(str(src))
        try:
            cap.set(cv2.CAP_PROP_POS_FRAMES, min(indices))
            wanted, out, pos = set(indices), {}, min(indices)
            while pos <= max(indices):
                ok, bgr = cap.read()
                if not ok:
                    raise ValueError(f"{src}: cannot read frame {pos}")
                if pos in wanted:
                    out[pos] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                pos += 1
        finally:
            cap.release()
        return np.stack([out[i] for i in indices])

    def ids(self, seq, index):
        from pycocotools import mask as mask_utils

        every = self._every[seq]
        if index % every:
            raise KeyError(f"frame {index} of {seq} is not annotated")
        rles = self._masklets[seq][index // every]
        if not rles:
            raise ValueError(f"{self._json[seq]}: annotated frame {index // every} has no masklets")
        rles = [{"size": r["size"], "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]}
                for r in rles]
        masks = mask_utils.decode(rles)  # H x W x objects
        out = np.zeros(masks.shape[:2], np.uint8 if masks.shape[2] < 255 else np.int32)
        for k in range(masks.shape[2]):
            out[masks[:, :, k] > 0] = k + 1
        return out


def sav_annotation_files(root: Path) -> list[Path]:
    """``*_manual.json`` in ``root`` and one level below (SA-V's ``sav_000/`` chunks)."""
    return sorted([*root.glob("*_manual.json"), *root.glob("*/*_manual.json")])


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    if sav_annotation_files(root):
        return "sav"
    meta = find_meta(root)
    if meta is not None and (root / davis.IMAGE_DIR).is_dir() and _lists_videos(meta):
        return "ytvos"
    return "davis"  # also `tinysam2 synth` output, whose meta.json describes the generator


def _lists_videos(meta: Path) -> bool:
    try:
        return isinstance(json.loads(meta.read_text()).get("videos"), dict)
    except (ValueError, AttributeError):
        return False


def open_videoset(root: str | Path, layout: str = "auto", sequences: list[str] | None = None) -> VideoSet:
    """The reader for ``layout`` (auto: detected from the files; mose reads as ytvos)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "davis":
        return DavisSet(root, sequences=sequences)
    if layout in ("ytvos", "mose"):
        return YouTubeVOSSet(root, sequences=sequences)
    if layout == "sav":
        return SAVSet(root, sequences=sequences)
    raise ValueError(f"unknown data format {layout!r} (auto, davis, ytvos, mose, sav)")
