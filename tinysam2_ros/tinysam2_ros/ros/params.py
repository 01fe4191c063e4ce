"""The node's parameters as data: defaults, ranges, choices and whether they change live.

``config/tracker.yaml`` mirrors these defaults. ``validate`` is what the node's
set-parameters callback uses, so a bad value is refused with a reason instead of
half-applied; it is plain Python and tested without ROS. Settings sections
(``memory.*``) are generated from their dataclasses (``settings.py``): register a
new one in ``SECTIONS``.
"""
from __future__ import annotations

from typing import Any

from ..memory.config import MemoryConfig
from ..memory.routing import RoutingConfig
from ..settings import ParamSpec, default_param_specs, param_overrides, param_specs
from ..geometry.depth3d import Depth3DConfig
from ..tracking.association import AssociationConfig

DEPTH3D_PREFIX = "depth3d."
DETECTION_PREFIX = "detections."
MEMORY_PREFIX = "memory."
ROUTING_PREFIX = "routing."
# parameter prefix -> settings dataclass; unset ('' / -1) = the preset's value
SECTIONS: dict[str, type] = {
    MEMORY_PREFIX: MemoryConfig,
    ROUTING_PREFIX: RoutingConfig,
}
# parameter prefix -> settings dataclass without a preset: parameters start at its defaults
DEFAULTED_SECTIONS: dict[str, type] = {
    DETECTION_PREFIX: AssociationConfig,
    DEPTH3D_PREFIX: Depth3DConfig,
}

_NODE_PARAMS: tuple[ParamSpec, ...] = (
    # model and backend (take effect on configure)
    ParamSpec("preset", "tinysam2", "model preset (edgetam, sam2.1_hiera_t/s/b+/l, tinysam2, tiny, tiny_norm)"),
    ParamSpec("checkpoint", "", "checkpoint file (.pt/.safetensors); empty = random weights (testing only)"),
    ParamSpec("backend", "auto", "inference backend; auto = TensorRT engines in engine_dir if they run here, else "
              "onnxruntime (exported once into ~/.cache/tinysam2_ros), else torch",
              choices=("auto", "torch", "onnxruntime", "tensorrt")),
    ParamSpec("engine_dir", "", "exported graphs / TensorRT engines (tinysam2 export / build-engine) for "
              "the onnxruntime and tensorrt backends; empty = onnxruntime exports into the cache"),
    ParamSpec("precision", "fp32", "compute precision: fp32, bf16 (torch backend) or int8 (onnxruntime: the image "
              "encoder's convolutions in int8, calibrated); see docs/efficiency-backends.md", choices=("fp32", "bf16", "int8")),
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
    # outputs
    ParamSpec("publish_masks", True, "publish the label image on 'masks'", live=True),
    ParamSpec("publish_overlay", True, "publish the annotated image on 'overlay'", live=True),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", range=(0.1, 60.0)),
    # limits on bad or hostile input (docs/robustness.md): a refusal is logged once per cause and counted
    ParamSpec("max_image_pixels", 16_777_216, "largest image (width x height) processed; compressed images are "
              "checked from their header before decoding", range=(1, 2_147_483_647)),
    ParamSpec("max_label_length", 64, "longest prompt label in characters", range=(0, 65536)),
    ParamSpec("max_points_per_prompt", 64, "most points in one prompt", range=(1, 100000)),
    ParamSpec("prompt_queue_depth", 100, "prompts on the topic waiting for the worker (also the subscription's "
              "depth); beyond, new ones are dropped and counted", range=(1, 100000)),
    ParamSpec("service_queue_depth", 100, "service requests waiting for an answer (QoS depth)", range=(1, 100000)),
    ParamSpec("service_busy_timeout", 5.0, "seconds a service call waits for the tracker before answering 'busy'",
              range=(0.01, 600.0)),
)

PARAMS: tuple[ParamSpec, ...] = (
    _NODE_PARAMS
    + tuple(s for prefix, cls in SECTIONS.items() for s in param_specs(cls, prefix))
    + tuple(s for prefix, cls in DEFAULTED_SECTIONS.items() for s in default_param_specs(cls, prefix))
)
SPECS = {p.name: p for p in PARAMS}


def association_config(values: dict[str, Any]) -> AssociationConfig:
    """The AssociationConfig the ``detections.*`` parameters describe."""
    return AssociationConfig(**{k[len(DETECTION_PREFIX):]: v for k, v in values.items()
                                if k.startswith(DETECTION_PREFIX)})


def depth3d_config(values: dict[str, Any]) -> Depth3DConfig:
    """The Depth3DConfig that the depth3d.* parameter values give (ValueError if inconsistent)."""
    cfg = Depth3DConfig(**{k[len(DEPTH3D_PREFIX):]: v for k, v in values.items() if k.startswith(DEPTH3D_PREFIX)})
    cfg.validate()
    return cfg


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


def section_overrides(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Settings of section ``prefix`` set by parameters (the unset '' and -1 left out)."""
    return param_overrides(values, SECTIONS[prefix], prefix)


def memory_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Memory settings set by parameters (the unset '' and -1 left out)."""
    return section_overrides(values, MEMORY_PREFIX)


def routing_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Query-routing settings set by parameters (the unset '' and -1 left out)."""
    return section_overrides(values, ROUTING_PREFIX)


def yaml_text() -> str:
    """``config/tracker.yaml`` as it should read (the test keeps the file in sync)."""
    lines = [
        "# Parameters of tracker_node (defaults; ranges and checks in tinysam2_ros/ros/params.py).",
        "# '' and -1 under memory.* (generated from tinysam2_ros/memory/config.py) mean: use the preset's value.",
        "# [configure] = set before configure.",
        "/**:",
        "  ros__parameters:",
    ]
    for p in PARAMS:
        v = p.default
        text = f'"{v}"' if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else repr(v))
        lines.append(f"    {p.name}: {text}  # {p.description}{'' if p.live else ' [configure]'}")
    return "\n".join(lines) + "\n"
