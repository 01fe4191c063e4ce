"""Dataset readers: each layout on a small fixture written here in that layout."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from tinysam2_ros.evaluation.davis import write_annotation
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.modeling.presets import get_preset
from tinysam2_ros.training.data import Clip, ClipSampler
from tinysam2_ros.training.losses import LossWeights
from tinysam2_ros.training.unroll import unroll_clip
from tinysam2_ros.training.videosets import (DavisSet, SAVSet, YouTubeVOSSet, detect_layout, open_videoset)


def _ids_video(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """n x H x W object ids: object 1 moves right, object 2 (a square) moves down."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, h, w), np.uint8)
    y0 = int(rng.integers(2, 10))
    for t in range(n):
        ids[t, y0 : y0 + 12, 2 + 2 * t : 16 + 2 * t] = 1
        ids[t, 4 + t : 16 + t, 40:52] = 2
    return ids


def _rgb(ids: np.ndarray) -> np.ndarray:
    colours = np.array([[30, 30, 30], [220, 40, 40], [40, 200, 40]], np.uint8)
    return colours[ids]


def _write_ytvos(root, videos: dict[str, int], every: int = 5, meta_name: str = "meta.json"):
    """YouTube-VOS 2019 train layout with all frames: JPEGImages/<v>/*.jpg, annotations
    every ``every``-th frame in Annotations/<v>/*.png, and the meta file."""
    meta = {"videos": {}}
    for v, n in videos.items():
        ids = _ids_video(n, seed=len(v))
        (root / "JPEGImages" / v).mkdir(parents=True)
        for t in range(n):
            cv2.imwrite(str(root / "JPEGImages" / v / f"{t * 5:05d}.jpg"), _rgb(ids[t])[..., ::-1])
            if t % every == 0:
                write_annotation(root / "Annotations" / v / f"{t * 5:05d}.png", ids[t])
        frames = [f"{t * 5:05d}" for t in range(0, n, every)]
        meta["videos"][v] = {"objects": {"1": {"category": "a", "frames": frames},
                                         "2": {"category": "b", "frames": frames}}}
    (root / meta_name).write_text(json.dumps(meta))
    return root


def test_youtube_vos_sparse_annotations(tmp_path):
    root = _write_ytvos(tmp_path / "train", {"a1": 16, "b2": 11})
    (tmp_path / "train" / "JPEGImages" / "extra").mkdir()  # not in meta.json: not read
    assert detect_layout(root) == "ytvos"
    vs = open_videoset(root)
    assert isinstance(vs, YouTubeVOSSet) and vs.sequences == ["a1", "b2"]
    assert vs.num_frames("a1") == 16 and vs.annotated("a1") == [0, 5, 10, 15]
    assert np.array_equal(vs.ids("a1", 10), _ids_video(16, seed=2)[10])
    sampler = ClipSampler(vs, clip_len=6, max_objects=2, max_stride=1, prompt_probs=(1, 0, 0))
    seen = set()
    for s in range(12):
        clip = sampler.sample(np.random.default_rng(s))
        assert clip.annotated[0] and clip.annotated[1:].any()
        assert not clip.masks[~clip.annotated].any()  # no ground truth where none was annotated
        seen.add(tuple(clip.annotated))
    assert seen == {(True, False, False, False, False, True)}


def test_losses_skip_unannotated_frames(tmp_path):
    """A frame without annotation carries no loss: whatever its (absent) masks say, the
    losses are the same; marking it annotated changes them."""
    root = _write_ytvos(tmp_path, {"v": 11})
    clip = ClipSampler(open_videoset(root), clip_len=6, max_objects=2, max_stride=1,
                       prompt_probs=(1, 0, 0)).sample(np.random.default_rng(0))
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    mem = MemoryConfig.from_dict(get_preset("tiny")["memory"])

    def loss(c):
        with torch.no_grad():
            out = unroll_clip(model, c, mem, LossWeights(appearance=1.0), torch.device("cpu"))
        return {k: float(v) for k, v in out.items()}

    base = loss(clip)
    painted = clip.masks.copy()
    painted[~clip.annotated] = True  # nonsense truth on the unannotated frames
    assert loss(Clip(clip.frames, painted, clip.obj_ids, clip.prompts, clip.annotated)) == base
    dense = loss(Clip(clip.frames, painted, clip.obj_ids, clip.prompts, np.ones(6, bool)))
    assert dense["total"] != base["total"] and dense["appearance"] != base["appearance"]


def test_mose_meta_file_beside_the_split(tmp_path):
    """MOSE: the YouTube-VOS folders, every frame annotated, meta_train.json beside train/."""
    _write_ytvos(tmp_path / "train", {"m1": 8}, every=1, meta_name="meta.json")
    (tmp_path / "train" / "meta.json").rename(tmp_path / "meta_train.json")
    root = tmp_path / "train"
    assert detect_layout(root) == "ytvos"
    vs = open_videoset(root, "mose")
    assert vs.meta_path == tmp_path / "meta_train.json" and vs.annotated("m1") == list(range(8))
    clip = ClipSampler(vs, clip_len=3, max_objects=2).sample(np.random.default_rng(1))
    assert clip.annotated.all() and clip.masks[0].any(axis=(1, 2)).all()


def test_youtube_vos_errors(tmp_path):
    root = _write_ytvos(tmp_path / "r", {"a": 6})
    (root / "meta.json").write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="not a YouTube-VOS/MOSE meta file"):
        open_videoset(root, "ytvos")
    (root / "meta.json").write_text('{"videos": {"zzz": {}}}')
    with pytest.raises(ValueError, match="none of the 1 videos"):
        open_videoset(root, "ytvos")
    (root / "meta.json").unlink()  # no meta file (some MOSE downloads): every folder is read
    assert open_videoset(root, "mose").sequences == ["a"]
    shutil.rmtree(root / "Annotations")
    with pytest.raises(FileNotFoundError, match="no Annotations folder"):
        open_videoset(root, "ytvos")


def test_videos_without_a_clip_are_left_out(tmp_path):
    """YouTube-VOS validation annotates only an object's first frame: no clip to train on."""
    root = _write_ytvos(tmp_path, {"one": 11, "two": 16})
    for p in (root / "Annotations" / "one").glob("*.png"):
        if p.stem != "00000":
            p.unlink()
    assert ClipSampler(open_videoset(root), clip_len=6, max_stride=1).sequences == ["two"]
    for p in (root / "Annotations" / "two").glob("*.png"):
        if p.stem != "00000":
            p.unlink()
    with pytest.raises(ValueError, match="no sequence under .* has a clip of 6 frames"):
        ClipSampler(open_videoset(root), clip_len=6, max_stride=1)


def _write_sav(root, vid: str, n_frames: int, as_mp4: bool):
    """SA-V layout: <vid>.mp4 (24 fps, or a frame folder) and <vid>_manual.json with COCO
    RLE masklets on every 4th frame, encoded by pycocotools as SA-V's were."""
    from pycocotools import mask as mask_utils

    ids = _ids_video(n_frames, seed=3)
    root.mkdir(parents=True, exist_ok=True)
    if as_mp4:
        w = cv2.VideoWriter(str(root / f"{vid}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 24, (64, 48))
        for t in range(n_frames):
            w.write(_rgb(ids[t])[..., ::-1].copy())
        w.release()
    else:
        (root / vid).mkdir()
        for t in range(n_frames):
            cv2.imwrite(str(root / vid / f"{t:05d}.jpg"), _rgb(ids[t])[..., ::-1])
    masklet = []
    for t in range(0, n_frames, 4):
        rles = []
        for o in (1, 2):
            rle = mask_utils.encode(np.asfortranarray((ids[t] == o).astype(np.uint8)))
            rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
        masklet.append(rles)
    (root / f"{vid}_manual.json").write_text(json.dumps(
        {"video_id": vid, "video_frame_count": n_frames, "masklet": masklet, "masklet_id": [0, 1],
         "masklet_num": 2}))
    return ids


@pytest.mark.parametrize("as_mp4", [True, False])
def test_sav_masklets(tmp_path, as_mp4):
    ids = _write_sav(tmp_path / "sav_000", "sav_000001", 13, as_mp4)
    assert detect_layout(tmp_path) == "sav"
    vs = open_videoset(tmp_path)
    assert isinstance(vs, SAVSet) and vs.sequences == ["sav_000001"]
    assert vs.num_frames("sav_000001") == 13 and vs.annotated("sav_000001") == [0, 4, 8, 12]
    for t in (0, 8):
        assert np.array_equal(vs.ids("sav_000001", t), ids[t])  # the RLE decodes to the masks it encoded
    frames = vs.frames("sav_000001", [4, 5])
    assert frames.shape == (2, 48, 64, 3)
    expected = _rgb(ids[4]).astype(int)
    assert np.abs(frames[0].astype(int) - expected).mean() < 12  # the frame, through video/JPEG compression
    with pytest.raises(KeyError, match="not annotated"):
        vs.ids("sav_000001", 5)
    clip = ClipSampler(vs, clip_len=5, max_objects=2, max_stride=1).sample(np.random.default_rng(0))
    assert clip.annotated.tolist() == [True, False, False, False, True]


def test_sav_known_rle_string(tmp_path):
    """A COCO RLE written by hand: 3x3, column-major runs 1 background, 2 object, rest
    background -> pixels (1,0) and (2,0); counts [1, 2, 6], compressed one character each: '126'."""
    from pycocotools import mask as mask_utils

    expected = np.zeros((3, 3), np.uint8)
    expected[1:, 0] = 1
    assert mask_utils.encode(np.asfortranarray(expected))["counts"] == b"126"
    (tmp_path / "v").mkdir()
    for t in range(1):
        cv2.imwrite(str(tmp_path / "v" / "00000.jpg"), np.zeros((3, 3, 3), np.uint8))
    (tmp_path / "v_manual.json").write_text(json.dumps({"masklet": [[{"size": [3, 3], "counts": "126"}]]}))
    assert np.array_equal(SAVSet(tmp_path).ids("v", 0), expected)


def test_sav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SA-V"):
        SAVSet(tmp_path)
    (tmp_path / "x_manual.json").write_text(json.dumps({"masklet": [[]]}))
    with pytest.raises(FileNotFoundError, match="expected .*x.mp4"):
        SAVSet(tmp_path)
    (tmp_path / "x_manual.json").write_text("{}")
    with pytest.raises(ValueError, match="'masklet' list"):
        SAVSet(tmp_path)


def test_davis_reader_is_the_default(tmp_path):
    generate_sequence(tmp_path, "s", SynthConfig(num_frames=4, size=(32, 32), num_objects=1, seed=0))
    (tmp_path / "meta.json").write_text('{"generator": "tinysam2_ros.evaluation.synth"}')  # `tinysam2 synth`'s
    assert detect_layout(tmp_path) == "davis"
    vs = open_videoset(tmp_path)
    assert isinstance(vs, DavisSet) and vs.annotated("s") == [0, 1, 2, 3] and vs.void == 255
    with pytest.raises(ValueError, match="unknown data format"):
        open_videoset(tmp_path, "kitti")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        open_videoset(tmp_path / "missing")


def test_train_reads_each_layout(tmp_path):
    """One iteration of ``tinysam2 train`` on each layout, named and detected."""
    from tinysam2_ros.cli import main

    roots = {"ytvos": _write_ytvos(tmp_path / "yt", {"a": 11}), "sav": tmp_path / "sav"}
    _write_sav(roots["sav"], "v1", 9, as_mp4=True)
    for fmt, root in roots.items():
        for given in (fmt, "auto"):
            out = tmp_path / f"out_{fmt}_{given}"
            assert main(["train", str(root), "--out", str(out), "--data-format", given, "--preset", "tiny",
                         "--iterations", "1", "--clip-len", "6", "--max-stride", "1", "--bn-init-clips", "1",
                         "--workers", "0"]) == 0
            assert (out / "model.safetensors").is_file()
