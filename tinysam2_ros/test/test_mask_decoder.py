"""Prompt encoder, two-way transformer and mask decoder: keys, fidelity, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysam2_ros.modeling.mask_decoder import MaskDecoder
from tinysam2_ros.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from tinysam2_ros.modeling.two_way_transformer import TwoWayTransformer

PE_PREFIX = "sam_prompt_encoder."
MD_PREFIX = "sam_mask_decoder."


def _tsv_entries(path, prefix):
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        if key.startswith(prefix):
            out[key[len(prefix):]] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def _model_entries(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _build():
    torch.manual_seed(0)
    return PromptEncoder(), MaskDecoder(256, TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048))


@pytest.fixture(scope="module")
def loaded(edgetam_state_dict):
    pe, md = _build()
    pe.load_state_dict(_sub(edgetam_state_dict, PE_PREFIX), strict=True)
    md.load_state_dict(_sub(edgetam_state_dict, MD_PREFIX), strict=True)
    return pe.eval(), md.eval()


@pytest.fixture(scope="module")
def frame0(edgetam_state_dict, edgetam_reference_outputs, edgetam_fixture_dir):
    """Decoder inputs for the prompted frame 0 and the fixture's box in 1024-input pixels."""
    import json

    ref = edgetam_reference_outputs
    meta = json.loads((edgetam_fixture_dir / "fixture.json").read_text())
    (h_orig, w_orig), size = meta["frame_size_hw"], meta["image_size"]
    prompt = meta["prompts"][0]
    assert prompt["frame"] == 0 and "box_xyxy" in prompt
    x1, y1, x2, y2 = prompt["box_xyxy"]
    box = torch.tensor([[x1 * size / w_orig, y1 * size / h_orig, x2 * size / w_orig, y2 * size / h_orig]])

    def t(k):
        return torch.from_numpy(ref[k].astype(np.float32))

    no_mem = edgetam_state_dict["no_mem_embed"].reshape(1, -1, 1, 1)
    emb = t("frame0_backbone_fpn2") + no_mem
    high_res = [t("frame0_backbone_fpn0"), t("frame0_backbone_fpn1")]
    return box, emb, high_res


# --------------------------------------------------------------------- (a) keys
@pytest.mark.parametrize("tsv", ["edgetam_state_dict_keys.tsv", "sam2.1_hiera_t_state_dict_keys.tsv"])
def test_state_dict_keys_match_checkpoint_layout(reference_dir, tsv):
    pe, md = _build()
    assert _model_entries(pe) == _tsv_entries(reference_dir / tsv, PE_PREFIX)
    assert _model_entries(md) == _tsv_entries(reference_dir / tsv, MD_PREFIX)


def test_fixture_checkpoint_loads_strict(loaded):
    pe, md = loaded
    assert pe.get_dense_pe().shape == (1, 256, 64, 64)


# ------------------------------------------------------------ (b) fidelity
def _decode(pe, md, emb, high_res, **prompt):
    with torch.no_grad():
        sparse, dense = pe(**prompt)
        return md(
            image_embeddings=emb,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=high_res,
        )


def test_frame0_box_prompt_matches_reference(loaded, frame0, edgetam_reference_outputs):
    """The video predictor feeds a box as corner points (labels 2, 3) + padding point."""
    pe, md = loaded
    box, emb, high_res = frame0
    ref = edgetam_reference_outputs
    masks, iou, tokens, obj = _decode(pe, md, emb, high_res, points=PromptEncoder.boxes_to_points(box), boxes=None, masks=None)
    assert masks.shape == ref["dec00_masks"].shape == (1, 1, 256, 256)
    assert iou.shape == ref["dec00_iou"].shape and obj.shape == ref["dec00_obj_score"].shape
    assert tokens.shape == (1, 1, 256)

    d_mask = np.abs(masks.numpy() - ref["dec00_masks"]).max()
    d_iou = np.abs(iou.numpy() - ref["dec00_iou"]).max()
    d_obj = np.abs(obj.numpy() - ref["dec00_obj_score"]).max()
    scale = np.abs(ref["dec00_masks"]).max()
    print(f"\nframe0 box-as-points: max|dmask|={d_mask:.3g} (max|ref|={scale:.3g}) |diou|={d_iou:.3g} |dobj|={d_obj:.3g}")
    assert d_mask <= 1e-3 * max(1.0, scale)  # measured ~1e-4
    assert d_iou <= 1e-3
    assert d_obj <= 1e-3
    # same sign almost everywhere -> same binary mask
    agree = ((masks.numpy() > 0) == (ref["dec00_masks"] > 0)).mean()
    assert agree > 0.999


def test_box_routes(loaded, frame0, edgetam_reference_outputs):
    """``boxes=`` (2 tokens, no pad; SAM image-predictor style) vs. corner points
    (3 tokens incl. the padding point; SAM 2 video-predictor style). Both encode the
    corners identically; the video route has one extra padding token and is the one
    that reproduces the reference."""
    pe, md = loaded
    box, emb, high_res = frame0
    with torch.no_grad():
        sp_box, dense_box = pe(points=None, boxes=box, masks=None)
        sp_pts, dense_pts = pe(points=PromptEncoder.boxes_to_points(box), boxes=None, masks=None)
    assert sp_box.shape == (1, 2, 256) and sp_pts.shape == (1, 3, 256)
    torch.testing.assert_close(sp_pts[:, :2], sp_box, rtol=0, atol=0)
    torch.testing.assert_close(sp_pts[:, 2], pe.not_a_point_embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(dense_box, dense_pts, rtol=0, atol=0)

    # With an explicit padding point appended, the box route gives the video-route result.
    pad_pt = (torch.zeros(1, 1, 2), torch.full((1, 1), -1))
    with torch.no_grad():
        sp_box_pad, _ = pe(points=pad_pt, boxes=box, masks=None)
    assert sp_box_pad.shape == (1, 3, 256)
    torch.testing.assert_close(torch.cat([sp_box_pad[:, 1:], sp_box_pad[:, :1]], 1), sp_pts, rtol=0, atol=0)
    m_pts = _decode(pe, md, emb, high_res, points=PromptEncoder.boxes_to_points(box), boxes=None, masks=None)[0]
    m_box = _decode(pe, md, emb, high_res, points=None, boxes=box, masks=None)[0]
    # token order does not matter to the decoder (no positional index on tokens)
    m_box_pad = _decode(pe, md, emb, high_res, points=pad_pt, boxes=box, masks=None)[0]
    torch.testing.assert_close(m_box_pad, m_pts, rtol=1e-4, atol=1e-4)
    print(f"\nboxes= route vs corner-points route: max|dmask|={(m_box - m_pts).abs().max().item():.3g}")


# ------------------------------------------------------- (c) batch consistency
def test_batch_matches_single(loaded, frame0):
    pe, md = loaded
    box, emb, high_res = frame0
    box2 = torch.tensor([[500.0, 300.0, 800.0, 900.0]])
    c1, l1 = PromptEncoder.boxes_to_points(box)
    c2, l2 = PromptEncoder.boxes_to_points(box2)
    coords, labels = torch.cat([c1, c2]), torch.cat([l1, l2])
    for multimask in (False, True):
        with torch.no_grad():
            sp, de = pe(points=(coords, labels), boxes=None, masks=None)
            batched = md(emb.expand(2, -1, -1, -1), pe.get_dense_pe(), sp, de, multimask, False,
                         [f.expand(2, -1, -1, -1) for f in high_res])
            repeated = md(emb, pe.get_dense_pe(), sp, de, multimask, True, high_res)
            singles = []
            for c, l in ((c1, l1), (c2, l2)):
                s1, d1 = pe(points=(c, l), boxes=None, masks=None)
                singles.append(md(emb, pe.get_dense_pe(), s1, d1, multimask, False, high_res))
        for i, out in enumerate(batched):
            want = torch.cat([s[i] for s in singles])
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(repeated[i], want, rtol=1e-4, atol=1e-4)
        m = 3 if multimask else 1
        assert batched[0].shape == (2, m, 256, 256) and batched[1].shape == (2, m)
        assert batched[2].shape == (2, m, 256) and batched[3].shape == (2, 1)
    assert not torch.allclose(batched[0][0], batched[0][1])


# ------------------------------------------------------- (d) negative points
def test_negative_points(loaded, frame0):
    pe, md = loaded
    _, emb, high_res = frame0
    pos = (torch.tensor([[[300.0, 400.0], [350.0, 500.0]]]), torch.tensor([[1, 1]]))
    mixed = (torch.tensor([[[300.0, 400.0], [350.0, 500.0], [700.0, 700.0]]]), torch.tensor([[1, 1, 0]]))
    with torch.no_grad():
        sp_pos, _ = pe(points=pos, boxes=None, masks=None)
        sp_mix, _ = pe(points=mixed, boxes=None, masks=None)
    assert sp_pos.shape == (1, 3, 256) and sp_mix.shape == (1, 4, 256)  # + padding point
    with torch.no_grad():
        sp, de = pe(points=pos, boxes=None, masks=None)
        out_pos = md(emb, pe.get_dense_pe(), sp, de, True, False, high_res)
        sp, de = pe(points=mixed, boxes=None, masks=None)
        out_mix = md(emb, pe.get_dense_pe(), sp, de, True, False, high_res)
    assert out_mix[0].shape == (1, 3, 256, 256) and out_mix[1].shape == (1, 3)
    assert out_mix[2].shape == (1, 3, 256) and out_mix[3].shape == (1, 1)
    assert (out_pos[0] - out_mix[0]).abs().max() > 1e-3


def _reference_point_embedding(pe, coords, labels, pad):
    """Straightforward (boolean-indexing) statement of SAM 2's point embedding."""
    coords = coords + 0.5
    if pad:
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 1, 2)], 1)
        labels = torch.cat([labels, -torch.ones(labels.shape[0], 1, dtype=labels.dtype)], 1)
    g = pe.pe_layer.positional_encoding_gaussian_matrix
    unit = torch.stack([coords[..., 0] / 1024, coords[..., 1] / 1024], -1)
    proj = 2 * np.pi * ((2 * unit - 1) @ g)
    emb = torch.cat([proj.sin(), proj.cos()], -1)
    emb[labels == -1] = 0.0
    emb[labels == -1] += pe.not_a_point_embed.weight
    for k in range(4):
        emb[labels == k] += pe.point_embeddings[k].weight
    return emb


def test_point_embedding_semantics(loaded):
    pe, _ = loaded
    torch.manual_seed(1)
    coords = torch.rand(3, 5, 2) * 1024
    labels = torch.tensor([[1, 0, 2, 3, -1], [0, 0, 1, -1, -1], [4, 1, 1, 1, 0]])  # 4: no type embedding
    for pad in (True, False):
        want = _reference_point_embedding(pe, coords, labels, pad)
        got = pe._embed_points(coords, labels, pad)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dense_pe_and_masks(loaded):
    pe, _ = loaded
    layer = pe.pe_layer
    # dense PE equals the point encoding of the 64x64 cell centres (16 px cells)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = torch.stack([xs * 16 + 8, ys * 16 + 8], -1).reshape(1, -1, 2)
    want = layer.forward_with_coords(centres, (1024, 1024)).reshape(64, 64, 256).permute(2, 0, 1)
    torch.testing.assert_close(pe.get_dense_pe()[0], want, rtol=1e-5, atol=1e-5)
    assert isinstance(layer, PositionEmbeddingRandom)

    with torch.no_grad():
        sp, de = pe(points=None, boxes=None, masks=torch.randn(2, 1, 256, 256))
        sp0, de0 = pe(points=None, boxes=None, masks=None)
    assert sp.shape == (2, 0, 256) and de.shape == (2, 256, 64, 64)
    assert sp0.shape == (1, 0, 256)
    torch.testing.assert_close(de0, pe.no_mask_embed.weight.reshape(1, 256, 1, 1).expand(1, 256, 64, 64))


def test_dynamic_multimask_selection(loaded):
    """Unstable single-mask output falls back to the best multimask output; stable keeps it."""
    _, md = loaded
    b, h, w = 2, 8, 8
    logits = torch.full((b, 4, h, w), -5.0)
    logits[0, 0] = 5.0                      # sample 0: single mask perfectly stable
    logits[1, 0] = 0.01                     # sample 1: all within +-delta -> unstable
    logits[:, 2] = 3.0
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.8]])
    masks, scores = md._dynamic_multimask_via_stability(logits, iou)
    torch.testing.assert_close(masks[0, 0], logits[0, 0])
    torch.testing.assert_close(scores[0], iou[0, :1])
    torch.testing.assert_close(masks[1, 0], logits[1, 3])
    torch.testing.assert_close(scores[1], iou[1, 3:])
