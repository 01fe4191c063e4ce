#!/usr/bin/env bash
# colcon-build the workspace the way a robot does: tinysam2_ros_msgs (ament_cmake) and
# tinysam2_ros (ament_python) into install/, plus vision_msgs and composition_interfaces
# from ../shared/ros when present (a robot gets them from apt). No --symlink-install:
# the tests run what a robot installs (`make build` after editing, about 15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
SHARED_ROS=${SHARED_ROS:-$ROOT/../shared/ros}
PY="$VENV/bin/python"
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

paths=(tinysam2_ros_msgs tinysam2_ros)
for extra in vision_msgs launch_stack/composition_interfaces; do
  if [ -f "$SHARED_ROS/$extra/package.xml" ]; then
    paths+=("$(cd "$SHARED_ROS/$extra" && pwd)")
  else
    echo "[build] $SHARED_ROS/$extra not found: building without it"
  fi
done

mkdir -p log
echo "[build] colcon build ${paths[*]}"
(
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
  "$VENV/bin/colcon" build --base-paths "${paths[@]}" \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" \
    > log/colcon_build.txt 2>&1
) || { tail -40 log/colcon_build.txt >&2; echo "[build] colcon build failed (log/colcon_build.txt)" >&2; exit 1; }

# Without sourcing install/setup.bash the venv still finds the workspace: .pth entries
# for its Python packages, its typesupport libraries beside the wheels' (whose
# bootstrapper puts <venv>/lib on the library path), and a `tinysam2` command.
SITE="$VENV/lib/python$PYVER/site-packages"
: > "$SITE/tinysam2_ros_workspace.pth"
for pkg in install/*/; do
  d="$ROOT/${pkg}lib/python$PYVER/site-packages"
  [ -d "$d" ] && echo "$d" >> "$SITE/tinysam2_ros_workspace.pth"
  for lib in "$ROOT/${pkg}"lib/lib*.so; do [ -e "$lib" ] && ln -sf "$lib" "$VENV/lib/"; done
done
cat > "$VENV/bin/tinysam2" <<SH
#!/usr/bin/env bash
exec "$PY" -m tinysam2_ros.cli "\$@"
SH
chmod +x "$VENV/bin/tinysam2"
(cd /tmp && "$PY" -c "import tinysam2_ros_msgs.msg, tinysam2_ros.ros") || { echo "[build] the workspace does not import" >&2; exit 1; }
echo "[build] done: install/setup.bash"
