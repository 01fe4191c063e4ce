"""Shared pytest fixtures: where the shared reference data lives, loaded once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the ament_python package tinysam2_ros/
REPO_ROOT = PACKAGE_DIR.parent  # the git checkout (../shared sits beside it)
SHARED_DIR = REPO_ROOT.parent / "shared"
EDGETAM_FIXTURE = SHARED_DIR / "fixtures" / "edgetam_reference"
REFERENCE_DIR = SHARED_DIR / "reference"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared reference data not found at {path} (clone with ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def edgetam_fixture_dir() -> Path:
    return _require(EDGETAM_FIXTURE)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _require(REFERENCE_DIR)


@pytest.fixture(scope="session")
def edgetam_state_dict(edgetam_fixture_dir) -> dict[str, torch.Tensor]:
    """The fixture's fp16 checkpoint upcast to float32 (the reference ran in float32)."""
    sd = torch.load(edgetam_fixture_dir / "checkpoint_fp16.pt", map_location="cpu", weights_only=True)["model"]
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


@pytest.fixture(scope="module")
def ros():
    """An initialised rclpy for the node tests of one module."""
    rclpy = pytest.importorskip("rclpy")
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A small random model that reports objects as present (so tracks carry masks): what
    the node tests load, since a trained model is not needed to test the wiring."""
    from tinysam2_ros.modeling.build import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(3.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def edgetam_reference_outputs(edgetam_fixture_dir):
    import numpy as np

    with np.load(edgetam_fixture_dir / "reference_outputs.npz") as data:
        return {k: data[k] for k in data.files}


# The suite's nodes talk over real DDS. Keep them off the default domain, where a robot's
# own nodes (or another test run on the same machine) would answer them: a domain per
# run unless the caller chose one (test_launch.py uses 60-89 for its launch processes).
os.environ.setdefault("ROS_DOMAIN_ID", str(30 + os.getpid() % 30))


def pytest_configure(config):
    # `pytest -m "not slow"` is the quick developer run; the default command runs everything
    config.addinivalue_line("markers", "slow: takes a minute or more (training runs); deselect with -m 'not slow'")


@pytest.fixture(autouse=True, scope="session")
def _private_export_cache(tmp_path_factory):
    """Exports cached by the onnxruntime / auto backends (``backends/auto.py``) go to a
    temporary directory, never into the user's ~/.cache."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
