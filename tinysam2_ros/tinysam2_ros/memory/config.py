"""Memory settings of the streaming tracker (the ``memory`` section of a preset)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..settings import check_fields

SIMILARITY_RULES = ("redundancy", "recency")


@dataclass
class MemoryConfig:
    """Every knob of the memory; ``compression="off"`` is SAM 2's memory exactly.

    Each field describes itself (``settings.py``): the node's ``memory.*`` parameters,
    the CLI's memory flags and the checks below are generated from these fields.
    """

    compression: str = field(default="off", metadata={
        "help": "'off' = SAM 2's memory (the last num_maskmem - 1 frames, all tokens), 'tinysam2' = "
                "quality-managed frames, pooled and selected tokens",
        "choices": ("off", "tinysam2"), "range": None, "live": False, "flag": "--memory"})
    num_slots: int = field(default=6, metadata={
        "help": "non-prompted memory frames kept per object (SAM 2: 6)",
        "range": (1, 64), "choices": None, "live": False})
    max_cond_frames: int = field(default=16, metadata={
        "help": "prompted frames kept per object; the first prompt and the newest ones survive",
        "range": (1, 64), "choices": None, "live": True})
    pool_factor: int = field(default=1, metadata={
        "help": "average-pooling factor of each memory frame's token grid (1 = none)",
        "range": (1, 16), "choices": None, "live": False})
    token_budget: int = field(default=0, metadata={
        "help": "spatial memory tokens per object fed to memory attention, 0 = no limit (object pointers "
                "are not counted)",
        "range": (0, 1_000_000), "choices": None, "live": True})
    similarity: str = field(default="redundancy", metadata={
        "help": "token selection rule: 'redundancy' drops tokens most like those at the same place in other "
                "memory frames, 'recency' keeps the newest",
        "choices": SIMILARITY_RULES, "range": None, "live": True})
    write_threshold: float = field(default=0.0, metadata={
        "help": "minimum frame quality for a tracked frame to enter memory",
        "range": (0.0, 1.0), "choices": None, "live": True})
    keep_recent: int = field(default=1, metadata={
        "help": "newest qualifying frames kept regardless of quality ranking (at most num_slots)",
        "range": (0, 64), "choices": None, "live": True})
    write_every: int = field(default=1, metadata={
        "help": "after an object's first tracked write, a tracked frame is a memory candidate only every this many "
                "frames, where (frame + id + 1) % write_every == 0, so objects write on different frames "
                "(1 = every frame; 2 halves the memory-encoder work); 'tinysam2' memory only",
        "range": (1, 1000), "choices": None, "live": True})
    pool_logit_bias: bool = field(default=False, metadata={
        "help": "pooled memory tokens carry a log(pool_factor^2) attention-logit bias, applied exactly by "
                "repeating them (an experiment, docs/efficiency.md; costs keys)",
        "range": None, "choices": None, "live": True})
    retrieval_keep: float = field(default=1.0, metadata={
        "help": "sparse memory retrieval: fraction of a tracked memory frame's tokens kept, chosen by the "
                "attention they receive on the frame's first recall (prompted and newest frames stay dense; 1 = off)",
        "range": (0.0, 1.0), "choices": None, "live": False})
    retrieval_queries: int = field(default=1024, metadata={
        "help": "sparse memory retrieval: most image tokens that score a newly recalled memory frame, a regular "
                "grid subset of the image (0 = all; 1024 = every other row and column at 1024 px input)",
        "range": (0, 1 << 20), "choices": None, "live": True})
    # internal (no parameter, no flag): frames after which a stored frame's retention score halves
    recency_half_life: float = 30.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors = check_fields(self)
        if self.keep_recent > self.num_slots:
            errors.append("keep_recent must be in [0, num_slots]")
        if self.recency_half_life <= 0:
            errors.append("recency_half_life must be > 0")
        if self.retrieval_keep <= 0.0:
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
