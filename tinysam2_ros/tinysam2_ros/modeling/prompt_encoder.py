"""SAM 2 prompt encoder: points, boxes and low-res masks -> decoder prompt tokens.

Semantics follow SAM 2 / SAM 2.1 (and EdgeTAM, which reuses them unchanged):

* point labels: ``1`` foreground click, ``0`` background click, ``2`` / ``3`` top-left /
  bottom-right box corner, ``-1`` padding ("not a point"). Any other label gets the
  positional encoding only (no learned type embedding), as in SAM 2.
* coordinates are in input-image pixels (e.g. 0..1024) and are shifted by +0.5 to the
  pixel centre before encoding.
* when points are given without a ``boxes`` tensor, one padding point is appended
  (the SAM 2 video predictor always goes this way: it passes a box as the two corner
  points with labels 2, 3 in front of any clicks, and ``boxes=None``).
* with no mask prompt the dense embedding is the learned ``no_mask_embed`` broadcast
  over the image-embedding grid.

The implementation avoids boolean-mask in-place writes so it traces/exports to ONNX
(opset 17) without data-dependent control flow.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier-feature position encoding (Tancik et al.), as used by SAM.

    A fixed ``2 x num_pos_feats`` Gaussian matrix (buffer
    ``positional_encoding_gaussian_matrix``, loaded from the checkpoint) projects
    coordinates normalised to [-1, 1]; the encoding is ``[sin(2*pi*p), cos(2*pi*p)]``,
    i.e. ``2 * num_pos_feats`` channels.
    """

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, unit_xy: torch.Tensor) -> torch.Tensor:
        """``unit_xy``: ``... x 2`` (x, y) in [0, 1]. Returns ``... x 2*num_pos_feats``."""
        proj = (unit_xy * 2.0 - 1.0) @ self.positional_encoding_gaussian_matrix
        proj = proj * (2.0 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``h x w`` grid, shape ``C x h x w``."""
        h, w = int(size[0]), int(size[1])
        gauss = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=gauss.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=gauss.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)], dim=-1
        )  # h x w x 2, (x, y)
        return self._encode(grid.to(gauss.dtype)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Encode ``B x N x 2`` pixel coordinates (x, y) of an image of ``image_size`` = (H, W)."""
        h, w = image_size
        coords = coords.to(torch.float32)
        unit = torch.cat([coords[..., 0:1] / w, coords[..., 1:2] / h], dim=-1)
        return self._encode(unit.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Encodes point / box / mask prompts for the SAM 2 mask decoder.

    state_dict: ``pe_layer.positional_encoding_gaussian_matrix``,
    ``point_embeddings.{0..3}.weight``, ``not_a_point_embed.weight``,
    ``mask_downscaling.{0,1,3,4,6}.*``, ``no_mask_embed.weight``.
    """

    #: label values understood by the encoder
    NOT_A_POINT = -1
    NEGATIVE = 0
    POSITIVE = 1
    BOX_TOP_LEFT = 2
    BOX_BOTTOM_RIGHT = 3

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: Tuple[int, int] = (64, 64),
        input_image_size: Tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings = 4  # negative, positive, box corner 1, box corner 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    # ------------------------------------------------------------------ helpers
    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, ``1 x embed_dim x H x W``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    @staticmethod
    def boxes_to_points(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``B x 4`` xyxy boxes -> (``B x 2 x 2`` corner coords, ``B x 2`` labels 2, 3).

        This is how the SAM 2 video predictor feeds a box: as two labelled points
        placed in front of any clicks, with ``boxes=None`` in :meth:`forward`.
        """
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([2, 3], dtype=torch.int64, device=boxes.device).expand(coords.shape[0], 2)
        return coords, labels

    def _label_table(self) -> torch.Tensor:
        """Rows: not-a-point, label 0..3, zeros (any other label)."""
        rows = [self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings]
        rows.append(torch.zeros_like(self.not_a_point_embed.weight))
        return torch.cat(rows, dim=0)  # 6 x C

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points.to(torch.float32) + 0.5  # pixel centres
        labels = labels.to(torch.int64)
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        is_pad = (labels == -1).unsqueeze(-1)
        known = (labels >= -1) & (labels <= 3)
        idx = torch.where(known, labels + 1, torch.full_like(labels, 5))
        type_embed = self._label_table()[idx]  # B x N x C
        # padding points: learned embedding only; all others: PE + type embedding
        return torch.where(is_pad, torch.zeros_like(pe), pe) + type_embed

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = boxes.to(torch.float32).reshape(-1, 2, 2) + 0.5
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return pe + corner_embed.unsqueeze(0)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        points: Optional[Tuple[torch.Tensor, torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords B x N x 2, labels B x N)`` in input-image pixels, or None.
            boxes: ``B x 4`` xyxy in input-image pixels, or None.
            masks: ``B x 1 x 4H x 4W`` mask logits (256x256 for a 64x64 embedding), or None.

        Returns:
            sparse ``B x N' x C`` (points [+ pad] then box corners) and
            dense ``B x C x H x W``.
        """
        bs = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        parts = []
        if points is not None:
            coords, labels = points
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            sparse = sparse.to(weight.dtype)
        else:
            sparse = weight.new_zeros(bs, 0, self.embed_dim)

        if masks is not None:
            dense = self._embed_masks(masks.to(weight.dtype))
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
