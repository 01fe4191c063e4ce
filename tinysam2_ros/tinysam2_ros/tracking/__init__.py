"""The ROS-free streaming tracker: prompts in, per-object masks and states out."""
from .tracker import FrameResult, ObjectResult, Tracker, TrackerConfig, TrackerError

__all__ = ["Tracker", "TrackerConfig", "TrackerError", "FrameResult", "ObjectResult"]
