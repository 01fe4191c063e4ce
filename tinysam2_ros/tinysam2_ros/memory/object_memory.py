"""One object-memory path for the streaming tracker and the training unroll.

An object's memory is its prompted frames (``ObjectTrack.cond``), the tracked frames
holding a memory slot (``ObjectTrack.bank``, kept by ``memory/quality.py``) and the
object pointers of recent frames. :class:`ObjectMemory` writes a decoded frame into it
(memory encoder + pooling, quality-ruled slot), reads it back for a frame (memory
frames, pointers, sparse retrieval, token budget -> memory-attention inputs) and runs
memory attention (dense or routed). The tracker (``tracking/tracker.py``) and the
unroll (``training/unroll.py``) both go through it, so the model is trained with the
memory it tracks with.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import torch

from ..modeling.sam2_model import HeadOutput, SAM2Model
from ..modeling.stages import dense_queries, tokens_to_map
from .assemble import assemble_memory
from .compression import TokenLayout, pool_tokens
from .config import MemoryConfig
from .quality import frame_quality, mask_agreement, next_bank
from .retrieval import RetrievalScorer, grid_subset
from .routing import RoutingConfig, Router


@dataclass
class MemoryEntry:
    """What one processed frame leaves for an object."""

    frame_idx: int
    features: torch.Tensor | None  # N x mem_dim (pooled when compressed); None when not in memory
    obj_ptr: torch.Tensor  # C
    low_res_logits: torch.Tensor | None  # 1 x 4H x 4W gated logits; dropped outside the feature window
    object_score: float
    iou: float
    ious: torch.Tensor  # M, the decoder's IoU predictions for its candidate masks
    quality: float = 1.0
    absent_frames: int = 0  # consecutive frames without the object, this one included
    prompt: object | None = None  # the Prompt of a prompted frame
    kept: torch.Tensor | None = None  # sparse retrieval: indices of the tokens kept, chosen on first recall


@dataclass
class ObjectTrack:
    obj_id: int
    label: str = ""
    first_frame: int = 0
    cond: dict[int, MemoryEntry] = field(default_factory=dict)  # prompted frames
    entries: dict[int, MemoryEntry] = field(default_factory=dict)  # tracked frames still referenced
    bank: tuple[int, ...] = ()  # tracked frames whose spatial memory is used
    bank_at: "OrderedDict[int, tuple[int, ...]]" = field(default_factory=OrderedDict)  # bank after frame f
    memory_tokens: int = 0  # spatial memory tokens fed to memory attention on the last frame
    pointer_tokens: int = 0
    query_tokens: int = 0  # image tokens that went through memory attention on the last frame
    last_dense: int = -1  # last frame conditioned densely (routing)
    conditioned: torch.Tensor | None = None  # C x h x w memory-conditioned features of the last frame

    def entry(self, frame_idx: int) -> MemoryEntry | None:
        return self.cond.get(frame_idx) or self.entries.get(frame_idx)

    def memory_bytes(self, now: int, ptr_horizon: int, window: int) -> int:
        """Bytes of the memory this object tracks with: prompted frames, memory slots,
        the object pointers of the last ``ptr_horizon`` frames, and the mask logits of
        the feature window. (Frames kept only for rolling back on a late prompt are
        not counted; there are at most ``window`` of them.)"""
        seen: dict[int, int] = {}

        def add(t: torch.Tensor | None) -> None:
            if t is not None:
                seen[id(t)] = t.numel() * t.element_size()

        slots = [self.entries[f] for f in self.bank if f in self.entries]
        for e in list(self.cond.values()) + slots:
            add(e.features)
        for f, e in list(self.cond.items()) + list(self.entries.items()):
            if f > now - ptr_horizon or f in self.cond:
                add(e.obj_ptr)
            if f > now - window:
                add(e.low_res_logits)
        return sum(seen.values())


def token_layout(model: SAM2Model) -> TokenLayout:
    """A memory frame's tokens as the model writes them: free latents, then a grid."""
    sp = model.spatial_perceiver
    if sp is not None:
        side = int(round(sp.num_latents_2d ** 0.5))
        return TokenLayout(sp.num_latents, side, side)
    return TokenLayout(0, model.feat_size, model.feat_size)


@dataclass
class Assembled:
    """Memory-attention inputs for a batch of objects."""

    memory: torch.Tensor  # B x K x m
    memory_pos: torch.Tensor  # B x K x m
    coords: torch.Tensor  # B x K' x 2 rope positions of the spatial tokens
    num_ptr: int  # trailing object-pointer tokens


class ObjectMemory:
    """Write, read and attend to objects' memory for one model and memory setting.

    ``store_dtype``: dtype memory features are stored in (SAM 2 keeps bfloat16; the
    training unroll passes ``None`` to keep gradients in float32).
    """

    def __init__(self, model: SAM2Model, config: MemoryConfig, routing: RoutingConfig | None = None,
                 video_length: int | None = None, store_dtype: torch.dtype | None = torch.bfloat16) -> None:
        self.model = model
        self.config = config
        self.routing = routing or RoutingConfig()
        self.video_length = video_length
        self.store_dtype = store_dtype
        self.full_layout = token_layout(model)
        self.pool_factor = config.pool_factor if config.compressed else 1
        c = model.constants()
        pos = c["memory_pos"][None]
        _, pos, coords, self.layout = pool_tokens(pos, pos, c["memory_coords"], self.full_layout, self.pool_factor)
        self.mem_pos, self.mem_coords = pos[0], coords
        self.scorer = RetrievalScorer(model)
        self.router = Router(model, self.routing)

    # ------------------------------------------------------------------ write
    def encode(self, pix_feat: torch.Tensor, out: HeadOutput, is_mask_from_pts: bool) -> torch.Tensor:
        """Memory tokens (B x N x m, pooled, in ``store_dtype``) of decoded frames."""
        mem = self.model.encode_memory(pix_feat, out.high_res_masks, out.object_score_logits, is_mask_from_pts)
        tokens, _, _, _ = pool_tokens(mem.features, mem.features, mem.coords, self.full_layout, self.pool_factor)
        return tokens if self.store_dtype is None else tokens.to(self.store_dtype)

    @staticmethod
    def entries(out: HeadOutput, frames: list[int], tokens: torch.Tensor | None = None,
                obj_ptr: torch.Tensor | None = None) -> list[MemoryEntry]:
        """One entry per object of ``out``; ``tokens``/``obj_ptr`` default to none / ``out``'s."""
        obj_ptr = out.obj_ptr if obj_ptr is None else obj_ptr
        return [
            MemoryEntry(
                frame_idx=f,
                features=None if tokens is None else tokens[i],
                obj_ptr=obj_ptr[i],
                low_res_logits=out.low_res_masks[i].detach(),
                object_score=float(out.object_score_logits[i, 0]),
                iou=float(out.best_iou[i]),
                ious=out.ious[i].detach(),
            )
            for i, f in enumerate(frames)
        ]

    def write(self, obj: ObjectTrack, e: MemoryEntry, t: int, quality_override: float | None = None) -> bool:
        """Store tracked frame ``t`` and decide whether it takes a memory slot (returned)."""
        prev = obj.entry(t - 1)
        e.absent_frames = 0 if e.object_score > 0 else (prev.absent_frames if prev else 0) + 1
        prev_logits = prev.low_res_logits if prev is not None else None
        e.quality = frame_quality(e.object_score, e.iou, mask_agreement(e.low_res_logits, prev_logits))
        if quality_override is not None:
            e.quality = float(quality_override)
        obj.entries[t] = e
        quality = {f: obj.entries[f].quality for f in (*obj.bank, t)}
        # phase: one frame after the object's routing refresh phase ((t + id) % dense_every == 0),
        # so with equal periods an object's refresh and its memory write fall on different frames
        obj.bank = next_bank(obj.bank, quality, t, self.config, self.model.num_maskmem - 1, phase=obj.obj_id + 1)
        obj.bank_at[t] = obj.bank
        return t in obj.bank

    # ------------------------------------------------------------------ read
    def frames(self, obj: ObjectTrack, t: int) -> list[tuple[int, MemoryEntry]]:
        """(t_rel, entry) of the frames attended to at t: prompted (t_rel 0), then the bank, oldest first."""
        frames = [(0, e) for f, e in sorted(obj.cond.items()) if f != t]  # SAM 2 order: prompted, then oldest
        max_rel = self.model.num_maskmem - 1
        for f in sorted(obj.bank):
            if f < t and obj.entries.get(f) is not None and obj.entries[f].features is not None:
                frames.append((min(t - f, max_rel), obj.entries[f]))
        return frames

    def pointers(self, obj: ObjectTrack, t: int) -> tuple[list[int], list[torch.Tensor], int]:
        """(temporal offsets, pointers, max_ptrs): prompted frames', then the recent frames'."""
        m = self.model
        max_ptrs = m.max_obj_ptrs_in_encoder
        if self.video_length is not None:
            max_ptrs = min(self.video_length, max_ptrs)
        offsets, ptrs = [], []
        for f, e in sorted(obj.cond.items()):
            if f == t or (m.only_obj_ptrs_in_the_past_for_eval and f > t):
                continue
            offsets.append(t - f if m.use_signed_tpos_enc_to_obj_ptrs else abs(t - f))
            ptrs.append(e.obj_ptr)
        for t_diff in range(1, max_ptrs):
            f = t - t_diff
            if f < 0:
                break
            e = obj.entries.get(f)
            if e is not None:
                offsets.append(t_diff)
                ptrs.append(e.obj_ptr)
        return offsets, ptrs, max_ptrs

    def _sparse(self, frames: list[tuple[int, MemoryEntry]]) -> list[bool]:
        """Which memory frames are read sparsely: tracked frames but the newest."""
        if self.config.retrieval_keep >= 1.0:
            return [False] * len(frames)
        tracked = [i for i, (r, _) in enumerate(frames) if r > 0]
        newest = max(tracked, key=lambda i: frames[i][1].frame_idx) if tracked else -1
        return [r > 0 and i != newest for i, (r, _) in enumerate(frames)]

    def signature(self, obj: ObjectTrack, t: int) -> tuple:
        """Objects with equal signatures have equally shaped memory and batch together."""
        frames = self.frames(obj, t)
        offsets, _, _ = self.pointers(obj, t)
        rels = tuple(r if not self.config.compressed else 0 for r, _ in frames)
        n_keep = self._n_keep()
        sparse = tuple((e.kept.numel() if e.kept is not None else n_keep) if s else 0
                       for (_, e), s in zip(frames, self._sparse(frames)))
        return rels, sparse, tuple(offsets)

    def _n_keep(self) -> int:
        return max(1, int(round(self.config.retrieval_keep * self.layout.num_tokens)))

    def groups(self, objs: list[ObjectTrack], t: int) -> list[list[int]]:
        """Indices into ``objs`` of the objects with memory at ``t``, batched by signature
        and, with routing on, by the token grid they send besides their route (one dense
        object does not make the whole batch dense, nor one refresh the batch refresh)."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, o in enumerate(objs):
            if self.frames(o, t):
                groups[(self.signature(o, t), self.router.grid_stride(o, t))].append(i)
        return list(groups.values())

    def read(self, objs: list[ObjectTrack], t: int, queries: tuple | None = None) -> Assembled:
        """Memory-attention inputs of objects sharing a signature at ``t``.

        ``queries`` (tokens, pos, coords of the current frame's queries) score the tokens
        of memory frames recalled sparsely for the first time (``memory.retrieval_keep``).
        """
        m = self.model
        per_obj = [self.frames(o, t) for o in objs]
        sparse = self._sparse(per_obj[0])
        t_rels = torch.tensor([[r for r, _ in frames] for frames in per_obj], device=self.mem_pos.device)
        if any(sparse):
            self._select(per_obj, sparse, t_rels, queries)
        offsets, _, max_ptrs = self.pointers(objs[0], t)
        ptrs = torch.stack([torch.stack(self.pointers(o, t)[1]) for o in objs]) if offsets else None
        budget = self.config.token_budget if self.config.compressed else 0
        feats_bt = torch.stack([torch.stack([e.features for _, e in frames]) for frames in per_obj]).float()
        allowed = None
        if any(sparse):
            # sparse frames offer only their kept tokens and count for that share of a frame
            # in the budget, so retrieval shrinks the memory read even where the budget binds
            if budget:
                share = (len(sparse) - sum(sparse) * (1.0 - self.config.retrieval_keep)) / len(sparse)
                budget = max(1, round(budget * share))
            allowed = torch.ones(feats_bt.shape[:3], dtype=torch.bool, device=feats_bt.device)
            for j in (j for j, s in enumerate(sparse) if s):
                allowed[:, j] = False
                for i, frames in enumerate(per_obj):
                    allowed[i, j, frames[j][1].kept] = True
        mem, mem_pos, coords, n_ptr = assemble_memory(m, feats_bt, t_rels, self.mem_pos, self.mem_coords, budget,
                                                      self.config.similarity, ptrs, offsets, max_ptrs, allowed)
        for o in objs:
            o.memory_tokens, o.pointer_tokens = mem.shape[1] - n_ptr, n_ptr
        if self.config.pool_logit_bias and self.pool_factor > 1:
            mem, mem_pos, coords = self._repeat_pooled(mem, mem_pos, coords, n_ptr)
        return Assembled(mem, mem_pos, coords, n_ptr)

    def _repeat_pooled(self, mem, mem_pos, coords, n_ptr):
        """A log(f^2) logit bias on pooled tokens, exactly: softmax weights a key repeated
        f^2 times as one key with that bias. Pooled grid tokens are those not at (0, 0)
        (free latents sit there; pooled cells land on half-integer positions)."""
        reps = self.pool_factor ** 2
        grid_b = (coords != 0).any(dim=-1)
        if not bool((grid_b == grid_b[:1]).all()):
            raise ValueError("pool_logit_bias needs the batch's objects to keep the same token layout")
        grid = grid_b[0]
        counts = torch.where(grid, reps, 1)
        spatial = mem.shape[1] - n_ptr
        rep = lambda x: x.repeat_interleave(counts, dim=1)  # noqa: E731
        mem = torch.cat([rep(mem[:, :spatial]), mem[:, spatial:]], 1)
        mem_pos = torch.cat([rep(mem_pos[:, :spatial]), mem_pos[:, spatial:]], 1)
        return mem, mem_pos, rep(coords)

    def _select(self, per_obj, sparse, t_rels, queries) -> None:
        """Choose the kept tokens of sparse frames recalled for the first time (cached on the entry)."""
        n_keep = self._n_keep()
        for j, is_sparse in enumerate(sparse):
            todo = [i for i, frames in enumerate(per_obj) if is_sparse and frames[j][1].kept is None]
            if not todo:
                continue
            feats = torch.stack([per_obj[i][j][1].features for i in todo]).float()
            pos = self.mem_pos[None] + self.model.memory_tpos(int(t_rels[todo[0], j]))[0]
            q = None if queries is None else tuple(x[todo] if x.shape[0] > 1 else x for x in queries)
            scores = self.scorer.score(feats, pos.expand(len(todo), -1, -1), self.mem_coords, q)
            kept = scores.topk(n_keep, dim=1).indices.sort(dim=1).values
            for i, k in zip(todo, kept):
                per_obj[i][j][1].kept = k

    # ------------------------------------------------------------------ attend
    def condition(self, objs: list[ObjectTrack], pix_feat: torch.Tensor, t: int, timer=None) -> torch.Tensor:
        """Memory-conditioned features ``B x C x h x w`` of objects sharing a signature.

        With routing on, only the routed tokens go through memory attention; the others
        take the routing's fill, on a coarse pass corrected by the grid tokens' residual
        (see ``memory/routing.py``). ``timer(name)`` is an
        optional context manager timing the memory-attention stage.
        """
        m = self.model
        h, w = pix_feat.shape[-2:]
        tokens, pos, coords = dense = dense_queries(pix_feat, m.constants()["pix_pos"])
        route = self.router.route(objs, pix_feat, t)
        if route is not None:
            tokens, pos, coords = (x.gather(1, route[..., None].expand(-1, -1, x.shape[-1]))
                                   for x in (tokens, pos, coords))
        # retrieval scores a newly recalled frame with the image's queries, routed or not
        # (a grid subset of at most memory.retrieval_queries): scored by the routed ones only,
        # the demo model at 512 kept 95.6 % of dense J&F instead of 114 % (docs/efficiency.md)
        mem = self.read(objs, t, grid_subset(dense, h, w, self.config.retrieval_queries))
        ctx = timer("memory_attention") if timer is not None else _nullcontext()
        with ctx:
            out = m.attend_memory(tokens, pos, coords, mem.memory, mem.memory_pos, mem.num_ptr, mem.coords)
        for o in objs:
            o.query_tokens = out.shape[1]
        if route is None:
            cond = tokens_to_map(out, h, w)
            for o in objs:
                o.last_dense = t
        else:
            base = self.router.fill(objs, pix_feat)
            index = route[..., None].expand(-1, -1, out.shape[-1])
            cond = base.flatten(2).transpose(1, 2).clone().scatter_(1, index, out.to(base.dtype))
            stride = self.router.grid_stride(objs[0], t)
            if stride > 1:
                cond = self.router.interpolate_residual(tokens_to_map(cond, h, w), base, stride)
                cond = cond.flatten(2).transpose(1, 2).clone().scatter_(1, index, out.to(base.dtype))
            cond = tokens_to_map(cond, h, w)
        if self.routing.enabled and self.routing.fill == "previous":
            for i, o in enumerate(objs):
                o.conditioned = cond[i].detach()
        return cond


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


__all__ = ["ObjectMemory", "ObjectTrack", "MemoryEntry", "Assembled", "token_layout"]
