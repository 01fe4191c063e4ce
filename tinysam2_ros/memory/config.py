"""Memory settings of the streaming tracker (the ``memory`` section of a preset)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SIMILARITY_RULES = ("redundancy", "recency")


@dataclass
class MemoryConfig:
    """Every knob of the memory; ``compression="off"`` is SAM 2's memory exactly.

    compression: "off" (SAM 2: the last ``num_maskmem - 1`` frames, all tokens) or
        "tinysam2" (quality-based frame retention + spatial pooling + token selection).
    num_slots: non-prompted memory frames kept per object (SAM 2: 6).
    max_cond_frames: prompted frames kept per object; the first prompt and the most
        recent ones survive (bounded memory under repeated prompts).
    pool_factor: average-pooling factor of each memory frame's token grid (1 = none).
    token_budget: spatial memory tokens per object fed to memory attention
        (0 = no limit); object-pointer tokens are not counted or compressed.
    similarity: token selection rule, "redundancy" (drop tokens most similar to the
        tokens at the same place in other memory frames) or "recency" (newest first).
    write_threshold: minimum frame quality for a tracked frame to enter memory.
    keep_recent: newest qualifying frames kept regardless of quality ranking.
    recency_half_life: frames after which a stored frame's retention score halves.
    pool_logit_bias: give each pooled memory token the attention weight of the
        pool_factor**2 tokens it stands for (a log(pool_factor**2) logit bias, applied
        exactly by repeating the token; an experiment, see docs/efficiency.md).
    retrieval_keep: sparse memory retrieval (``memory/retrieval.py``), fraction of a
        tracked memory frame's tokens kept, chosen on its first recall (1.0 = off).
    """

    compression: str = "off"
    num_slots: int = 6
    max_cond_frames: int = 16
    pool_factor: int = 1
    token_budget: int = 0
    similarity: str = "redundancy"
    write_threshold: float = 0.0
    keep_recent: int = 1
    recency_half_life: float = 30.0
    pool_logit_bias: bool = field(default=False, metadata={
        "help": "pooled memory tokens carry a log(pool_factor^2) attention-logit bias (experiment; costs keys)",
        "range": None, "choices": None, "live": True})
    retrieval_keep: float = field(default=1.0, metadata={
        "help": "sparse memory retrieval: fraction of a tracked memory frame's tokens kept, chosen by the attention "
                "they receive on the frame's first recall (prompted and newest frames stay dense; 1.0 = off)",
        "range": (0.0, 1.0), "choices": None, "live": False})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors = []
        if self.compression not in ("off", "tinysam2"):
            errors.append(f"compression must be 'off' or 'tinysam2', got {self.compression!r}")
        if self.num_slots < 1:
            errors.append("num_slots must be >= 1")
        if self.max_cond_frames < 1:
            errors.append("max_cond_frames must be >= 1")
        if self.pool_factor < 1:
            errors.append("pool_factor must be >= 1")
        if self.token_budget < 0:
            errors.append("token_budget must be >= 0 (0 = no limit)")
        if self.similarity not in SIMILARITY_RULES:
            errors.append(f"similarity must be one of {SIMILARITY_RULES}, got {self.similarity!r}")
        if not 0.0 <= self.write_threshold <= 1.0:
            errors.append("write_threshold must be in [0, 1]")
        if self.keep_recent < 0 or self.keep_recent > self.num_slots:
            errors.append("keep_recent must be in [0, num_slots]")
        if self.recency_half_life <= 0:
            errors.append("recency_half_life must be > 0")
        if not 0.0 < self.retrieval_keep <= 1.0:
            errors.append(f"retrieval_keep must be in (0, 1], got {self.retrieval_keep}")
        if errors:
            raise ValueError("invalid memory config: " + "; ".join(errors))

    @property
    def compressed(self) -> bool:
        return self.compression != "off"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "MemoryConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown memory settings: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
