#!/usr/bin/env bash
# Create .venv with everything tinysam2_ros needs on a machine without a ROS 2 install:
# the PyPI ROS 2 wheels (the venv is the ROS underlay), torch (CPU), onnx/onnxruntime,
# OpenCV, colcon; the ROS 2 launch stack from ../shared/ros when it is there; then build
# the workspace (tools/build_workspace.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac  # colcon needs absolute prefixes
PYTHON=${PYTHON:-python3}
SHARED_ROS=${SHARED_ROS:-$ROOT/../shared/ros}

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"tinysam2_ros needs Python >= 3.10, found {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
touch "$VENV/COLCON_IGNORE"  # the venv's share/*/package.xml are the underlay, not sources
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

echo "[setup] installing Python dependencies (requirements.txt)"
pip_install -r requirements.txt
"$PY" -c "import torch, rclpy, cv2, onnxruntime, scipy" || { echo "[setup] dependency install failed" >&2; exit 1; }
"$PY" tools/fix_ros_wheel_cmake.py "$VENV"

if [ -d "$SHARED_ROS/launch_stack" ]; then
  # launch_testing is left out: its pytest plugin does not load under pytest 9 and the
  # launch tests drive `ros2 launch` directly.
  echo "[setup] installing the ROS 2 launch stack from $SHARED_ROS/launch_stack"
  pip_install -r requirements-launch.txt
  for p in launch launch_xml launch_yaml launch_ros ros2cli ros2pkg ros2run ros2launch; do
    pip_install --no-deps --no-build-isolation "$SHARED_ROS/launch_stack/$p"
  done
else
  echo "[setup] no $SHARED_ROS/launch_stack: 'ros2 launch' is not installed here (tinysam2 track starts the node instead)"
fi

# The venv is this workspace's ROS underlay: activating it must also name it as an
# ament/CMake prefix (what /opt/ros/<distro>/setup.bash does on a robot).
if ! grep -q "tinysam2_ros underlay" "$VENV/bin/activate"; then
  cat >> "$VENV/bin/activate" <<ACT
# tinysam2_ros underlay: the ROS 2 wheels in this venv are the ROS prefix
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
ACT
fi

VENV="$VENV" SHARED_ROS="$SHARED_ROS" bash tools/build_workspace.sh
echo "[setup] done: source $VENV/bin/activate && source install/setup.bash"
