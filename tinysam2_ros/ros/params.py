"""The node's parameters as data: defaults, ranges, choices and whether they change live.

``config/tracker.yaml`` mirrors these defaults. ``validate`` is what the node's
set-parameters callback uses, so a bad value is refused with a reason instead of
half-applied; it is plain Python and tested without ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    live: bool = False  # may change while the node is configured
    range: tuple[float, float] | None = None  # inclusive
    choices: tuple[str, ...] | None = None


PARAMS: tuple[ParamSpec, ...] = (
    # model and backend (take effect on configure)
    ParamSpec("preset", "tinysam2", "model preset (edgetam, sam2.1_hiera_t/s/b+/l, tinysam2, tiny, tiny_norm)"),
    ParamSpec("checkpoint", "", "checkpoint file (.pt/.safetensors); empty = random weights (testing only)"),
    ParamSpec("backend", "auto", "inference backend; auto = TensorRT engines in engine_dir if they run here, else "
              "onnxruntime (exported once into ~/.cache/tinysam2_ros), else torch",
              choices=("auto", "torch", "onnxruntime", "tensorrt")),
    ParamSpec("engine_dir", "", "exported graphs / TensorRT engines (tinysam2 export / build-engine) for "
              "the onnxruntime and tensorrt backends; empty = onnxruntime exports into the cache"),
    ParamSpec("precision", "fp32", "compute precision: fp32, bf16 (torch backend) or int8 (onnxruntime, "
              "dynamic quantization); see docs/efficiency-backends.md", choices=("fp32", "bf16", "int8")),
    ParamSpec("device", "cpu", "torch device, e.g. cpu or cuda:0"),
    ParamSpec("autostart", True, "configure and activate on start-up (no lifecycle manager needed)"),
    # inputs
    ParamSpec("image_transport", "raw", "subscribe to sensor_msgs/Image (raw) or <image>/compressed",
              choices=("raw", "compressed")),
    ParamSpec("image_qos", "sensor_data", "image QoS: sensor_data (best effort, depth 1) or reliable",
              choices=("sensor_data", "reliable")),
    ParamSpec("max_objects", 32, "most objects tracked at once; prompts beyond are refused", range=(1, 1024)),
    # tracker
    ParamSpec("feature_window", 8, "recent frames kept for prompts that arrive late", range=(1, 120)),
    ParamSpec("stamp_tolerance", 0.05, "seconds between a prompt's stamp and the frame it refers to",
              live=True, range=(0.0, 10.0)),
    ParamSpec("lost_after", 30, "frames absent before an occluded track is reported lost", live=True,
              range=(1, 100000)),
    # memory (see tinysam2_ros/memory/config.py); "" / -1 = the preset's value
    ParamSpec("memory.compression", "", "'' = preset, 'off' = SAM 2 memory, 'tinysam2' = compressed",
              choices=("", "off", "tinysam2")),
    ParamSpec("memory.pool_factor", -1, "memory token pooling factor (-1 = preset)", range=(-1, 16)),
    ParamSpec("memory.num_slots", -1, "non-prompted memory frames per object (-1 = preset)", range=(-1, 64)),
    ParamSpec("memory.token_budget", -1, "spatial memory tokens per object, 0 = no limit (-1 = preset)",
              live=True, range=(-1, 1_000_000)),
    ParamSpec("memory.similarity", "", "token selection rule ('' = preset)", live=True,
              choices=("", "redundancy", "recency")),
    ParamSpec("memory.write_threshold", -1.0, "minimum frame quality to enter memory (-1 = preset)", live=True,
              range=(-1.0, 1.0)),
    ParamSpec("memory.keep_recent", -1, "newest frames kept regardless of quality (-1 = preset)", live=True,
              range=(-1, 64)),
    ParamSpec("memory.max_cond_frames", -1, "prompted frames kept per object (-1 = preset)", live=True,
              range=(-1, 64)),
    # outputs
    ParamSpec("publish_masks", True, "publish the label image on 'masks'", live=True),
    ParamSpec("publish_overlay", True, "publish the annotated image on 'overlay'", live=True),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", range=(0.1, 60.0)),
)

SPECS = {p.name: p for p in PARAMS}
MEMORY_PREFIX = "memory."


def validate(name: str, value: Any, configured: bool) -> str | None:
    """Why ``name := value`` must be refused, or None if it is acceptable."""
    spec = SPECS.get(name)
    if spec is None:
        return None  # not ours (e.g. use_sim_time)
    if configured and not spec.live:
        return f"{name} takes effect on configure only: deactivate, cleanup, set it, configure again"
    if type(value) is not type(spec.default) and not (isinstance(spec.default, float) and isinstance(value, int)):
        return f"{name} must be a {type(spec.default).__name__}, got {type(value).__name__}"
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f"{name} must be in [{spec.range[0]}, {spec.range[1]}], got {value}"
    return None


def memory_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Memory settings set by parameters (the unset sentinels '' and -1 left out)."""
    out = {}
    for name, value in values.items():
        if name.startswith(MEMORY_PREFIX) and value not in ("", -1, -1.0):
            out[name[len(MEMORY_PREFIX):]] = value
    return out


def yaml_text() -> str:
    """``config/tracker.yaml`` as it should read (the test keeps the file in sync)."""
    lines = [
        "# Parameters of tracker_node (defaults; ranges and checks in tinysam2_ros/ros/params.py).",
        "# '' and -1 under memory.* mean: use the preset's value. [configure] = set before configure.",
        "/**:",
        "  ros__parameters:",
    ]
    for p in PARAMS:
        v = p.default
        text = f'"{v}"' if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else repr(v))
        lines.append(f"    {p.name}: {text}  # {p.description}{'' if p.live else ' [configure]'}")
    return "\n".join(lines) + "\n"
