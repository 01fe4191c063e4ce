"""RepViT trunk: official key layout, M1 structure, and exactness of ``fuse()``."""
from __future__ import annotations

import ast

import pytest
import torch
from torch import nn

from tinysam2_ros.modeling.repvit import RepViTTrunk, SqueezeExcite

TRUNK_PREFIX = "image_encoder.trunk."
FUSE_ATOL = 1e-4


def _reference_shapes(reference_dir, prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (reference_dir / "edgetam_state_dict_keys.tsv").read_text().splitlines():
        key, _, shape = line.partition("\t")
        if key.startswith(prefix):
            shapes[key[len(prefix):]] = tuple(ast.literal_eval(shape.strip()))
    return shapes


def _randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine terms, so folding them is actually exercised."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=generator) + 0.5
            m.bias.data = torch.randn(n, generator=generator) * 0.2
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
        elif isinstance(m, SqueezeExcite):
            m.fc1.bias.data = torch.randn(m.fc1.bias.shape, generator=generator) * 0.2
            m.fc2.bias.data = torch.randn(m.fc2.bias.shape, generator=generator) * 0.2


def _count_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.fixture(scope="module")
def fixture_trunk(edgetam_state_dict) -> RepViTTrunk:
    trunk = RepViTTrunk().eval()
    weights = {k[len(TRUNK_PREFIX):]: v for k, v in edgetam_state_dict.items() if k.startswith(TRUNK_PREFIX)}
    trunk.load_state_dict(weights, strict=True)
    return trunk


def test_state_dict_matches_official_layout(reference_dir):
    expected = _reference_shapes(reference_dir, TRUNK_PREFIX)
    got = {k: tuple(v.shape) for k, v in RepViTTrunk().state_dict().items()}
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert got == expected


def test_m1_structure_and_output_shapes():
    trunk = RepViTTrunk().eval()
    assert trunk.channel_list == [384, 192, 96, 48]
    # SE on every other block, starting with the first block of each stage.
    blocks = trunk.body["stages_2"].blocks
    assert len(blocks) == 14
    assert [isinstance(b.se, SqueezeExcite) for b in blocks] == [i % 2 == 0 for i in range(14)]
    with torch.no_grad():
        outs = trunk(torch.randn(2, 3, 128, 192))
    assert [tuple(o.shape) for o in outs] == [
        (2, 48, 32, 48),
        (2, 96, 16, 24),
        (2, 192, 8, 12),
        (2, 384, 4, 6),
    ]


@pytest.mark.parametrize(
    "config",
    [
        dict(),  # RepViT-M1
        dict(embed_dims=(16, 32, 64), depths=(1, 3, 2), mlp_ratio=3, kernel_size=5),
    ],
    ids=["m1", "custom-k5"],
)
def test_fuse_random_weights(config):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    trunk = RepViTTrunk(**config).eval()
    _randomize_batchnorm(trunk, gen)
    x = torch.randn(2, 3, 160, 128, generator=gen)
    with torch.no_grad():
        ref = trunk(x)
        assert trunk.fuse() is trunk
        fused = trunk(x)
    assert _count_batchnorm(trunk) == 0
    assert all(isinstance(b.token_mixer, nn.Conv2d) for b in trunk.body["stages_0"].blocks)
    for r, f in zip(ref, fused):
        assert r.abs().max() > 0.1  # the comparison is not trivially small
        assert (r - f).abs().max().item() <= FUSE_ATOL


def test_fuse_fixture_weights(fixture_trunk, edgetam_reference_outputs):
    """Fixture weights (randomised BN stats) on the real preprocessed frame."""
    trunk = RepViTTrunk().eval()
    trunk.load_state_dict(fixture_trunk.state_dict())
    x = torch.from_numpy(edgetam_reference_outputs["frame0_input"]).float()[None]
    with torch.no_grad():
        ref = fixture_trunk(x)
        fused = trunk.fuse()(x)
    assert _count_batchnorm(trunk) == 0
    diffs = [(r - f).abs().max().item() for r, f in zip(ref, fused)]
    print("fused vs unfused max abs diff per level:", diffs)
    assert max(diffs) <= FUSE_ATOL
