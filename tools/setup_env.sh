#!/usr/bin/env bash
# Create .venv with everything tinysam2_ros needs on a machine without ROS 2:
# PyPI ROS 2 wheels, torch (CPU), onnx/onnxruntime, OpenCV, and the package's own
# rosidl messages built by colcon. Idempotent; re-run after pulling new messages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac  # colcon needs absolute prefixes
PYTHON=${PYTHON:-python3}

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"tinysam2_ros needs Python >= 3.10, found {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
SITE="$VENV/lib/python$PYVER/site-packages"

echo "[setup] installing Python dependencies (requirements.txt)"
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import torch, rclpy, cv2, onnxruntime" || { echo "[setup] dependency install failed" >&2; exit 1; }
"$PY" tools/fix_ros_wheel_cmake.py "$VENV"

echo "[setup] building the ROS interfaces (msg/, srv/) with colcon"
# The venv lives inside the source tree, which CMake refuses for exported include
# dirs; build through a link so the package's source dir is outside the venv path.
mkdir -p build/ws
ln -sfn ../.. build/ws/tinysam2_ros
(
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  "$VENV/bin/colcon" --log-base build/log build --base-paths build/ws \
    --build-base build/colcon --install-base install \
    --cmake-args -DBUILD_TESTING=OFF -DTINYSAM2_INSTALL_PYTHON=OFF \
      -DCMAKE_INSTALL_RPATH="$ROOT/install/tinysam2_ros/lib" \
    > build/colcon_build.log 2>&1
) || { tail -40 build/colcon_build.log >&2; echo "[setup] colcon build failed (full log: build/colcon_build.log)" >&2; exit 1; }

# Make the generated interfaces importable and loadable from the venv: the Python
# side through a .pth entry, the typesupport libraries in <venv>/lib, which the
# ROS wheels' bootstrapper puts on LD_LIBRARY_PATH.
echo "$ROOT/install/tinysam2_ros/lib/python$PYVER/site-packages" > "$SITE/tinysam2_ros_interfaces.pth"
ln -sf "$ROOT"/install/tinysam2_ros/lib/lib*.so "$VENV/lib/"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  -e . --config-settings editable_mode=compat 2>&1 | grep -v "^WARNING: Location" || true
(cd /tmp && "$PY" -c "import tinysam2_ros.msg") || { echo "[setup] generated messages do not import" >&2; exit 1; }
echo "[setup] done: $VENV"
