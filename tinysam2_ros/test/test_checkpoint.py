"""Checkpoint loading: official key layouts, strictness, safe and clear failures."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tinysam2_ros.checkpoint import (
    CheckpointError,
    guess_preset,
    load_checkpoint,
    load_state_dict_into,
    read_state_dict,
    resolve_preset,
    saved_preset,
    state_dict_from_key_listing,
)
from tinysam2_ros.modeling.build import build_model


@pytest.fixture(scope="module")
def edgetam_model():
    return build_model("edgetam")


@pytest.mark.parametrize(
    "preset,listing", [("edgetam", "edgetam_state_dict_keys.tsv"), ("sam2.1_hiera_t", "sam2.1_hiera_t_state_dict_keys.tsv")]
)
def test_public_key_layout_loads_exactly(reference_dir, preset, listing):
    sd = state_dict_from_key_listing(reference_dir / listing)
    model = build_model(preset)
    report = load_state_dict_into(model, sd, strict=True)
    assert report.ok and report.loaded == len(sd) == len(model.state_dict())
    assert guess_preset(sd) == preset


def test_wrong_preset_is_reported_with_a_guess(reference_dir):
    sd = state_dict_from_key_listing(reference_dir / "sam2.1_hiera_t_state_dict_keys.tsv")
    with pytest.raises(CheckpointError, match="looks like preset 'sam2.1_hiera_t'") as err:
        load_state_dict_into(build_model("tinysam2"), sd)
    assert "missing from the file" in str(err.value) and "unexpected in the file" in str(err.value)


def test_shape_mismatch_listed(edgetam_model, edgetam_state_dict):
    sd = dict(edgetam_state_dict)
    sd["no_obj_ptr"] = torch.zeros(1, 128)
    with pytest.raises(CheckpointError, match=r"no_obj_ptr: \(1, 128\) vs \(1, 256\)"):
        load_state_dict_into(edgetam_model, sd)


def test_fp16_checkpoint_is_upcast(edgetam_fixture_dir, edgetam_model):
    report = load_checkpoint(edgetam_model, edgetam_fixture_dir / "checkpoint_fp16.pt")
    assert report.ok and report.loaded == 982
    assert all(p.dtype == torch.float32 for p in edgetam_model.parameters())


def test_safetensors_and_bare_state_dict(tmp_path):
    model = build_model("tiny")
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "bare.pt")
    for name in ("m.safetensors", "bare.pt"):
        fresh = build_model("tiny")
        assert load_checkpoint(fresh, tmp_path / name).ok
        key = "sam_mask_decoder.iou_token.weight"
        assert torch.equal(fresh.state_dict()[key], sd[key].float())


def test_saved_preset_is_checked_and_resolved(tmp_path):
    """tiny and tiny_norm share every tensor but compute differently: weights saved by the
    trainer name their preset, a load under another preset is refused, tools default to it."""
    from tinysam2_ros.training.trainer import save_weights

    model = build_model("tiny_norm")
    path = tmp_path / "w.safetensors"
    save_weights(model, path, preset="tiny_norm")
    assert saved_preset(path) == "tiny_norm"
    assert load_checkpoint(build_model("tiny_norm"), path, preset="tiny_norm").ok
    with pytest.raises(CheckpointError, match="saved from preset 'tiny_norm', not 'tiny'.*--preset tiny_norm"):
        load_checkpoint(build_model("tiny"), path, preset="tiny")
    assert load_checkpoint(build_model("tiny"), path).ok  # no preset named: the caller knows best
    assert resolve_preset(None, path, "tinysam2") == "tiny_norm"
    assert resolve_preset(None, None, "tinysam2") == "tinysam2"
    plain = tmp_path / "plain.safetensors"
    save_weights(model, plain)
    assert saved_preset(plain) is None and resolve_preset("tiny", plain, "tinysam2") == "tiny"
    assert saved_preset(tmp_path / "missing.safetensors") is None
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    assert saved_preset(tmp_path / "bad.safetensors") is None  # read_state_dict reports it
    t = build_model("sam2.1_hiera_t")
    save_weights(t, tmp_path / "t.safetensors", preset="sam2.1_hiera_t")
    assert resolve_preset("sam2.1_hiera_tiny", tmp_path / "t.safetensors", "x") == "sam2.1_hiera_tiny"  # an alias


def test_bad_files_give_clear_errors(tmp_path, edgetam_fixture_dir):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "text.pt")
    data = (edgetam_fixture_dir / "checkpoint_fp16.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "cut.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save({"model": {"a": 1}}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        read_state_dict(tmp_path / "nostate.pt")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pt")


@pytest.mark.parametrize("preset", ["sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l", "tinysam2", "tiny"])
def test_other_presets_build(preset):
    model = build_model(preset)
    assert model.sam_mask_decoder is not None and len(model.state_dict()) > 100
