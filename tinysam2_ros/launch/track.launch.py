"""Start tinysam2_ros's tracker_node (and optionally RViz) for one camera.

    ros2 launch tinysam2_ros track.launch.py image:=/camera/color/image_raw detections:=/yolo/detections \
        checkpoint:=/path/edgetam.pt preset:=edgetam namespace:=front use_rviz:=true

Several cameras: launch once per camera with its own namespace.
3D per track (docs/3d.md): depth3d:=true depth:=/camera/aligned_depth_to_color/image_raw \
    camera_info:=/camera/color/camera_info
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _rviz(context, share: str):
    """RViz when asked for and installed; otherwise a warning, and the tracker runs alone."""
    wanted = LaunchConfiguration("use_rviz").perform(context).strip().lower() in ("true", "1", "yes")
    if not wanted:
        return []
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        return [LogInfo(msg="[WARN] use_rviz:=true but rviz2 is not installed here: starting tracker_node alone "
                            "(apt install ros-$ROS_DISTRO-rviz2, or run RViz on another machine)")]
    return [Node(
        package="rviz2",
        executable="rviz2",
        namespace=LaunchConfiguration("namespace"),
        arguments=["-d", os.path.join(share, "config", "track.rviz")],
    )]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("tinysam2_ros")
    args = [
        DeclareLaunchArgument("image", default_value="image", description="camera image topic"),
        DeclareLaunchArgument("prompts", default_value="prompts", description="PromptArray topic"),
        DeclareLaunchArgument("detections", default_value="detections",
                              description="vision_msgs/Detection2DArray topic of a detector (docs/detections.md)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "tracker.yaml"),
                              description="parameter file"),
        DeclareLaunchArgument("preset", default_value="tinysam2", description="model preset"),
        DeclareLaunchArgument("checkpoint", default_value="", description="checkpoint (.pt / .safetensors)"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="auto (TensorRT engines, else onnxruntime exported once, else torch), "
                                          "torch, onnxruntime or tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="torch device, e.g. cuda:0"),
        DeclareLaunchArgument("engine_dir", default_value="",
                              description="exported graphs / TensorRT engines for backend onnxruntime / tensorrt"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace (one per camera)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz with config/track.rviz"),
        DeclareLaunchArgument("depth3d", default_value="false", description="3D per track from depth + camera_info"),
        DeclareLaunchArgument("depth", default_value="depth",
                              description="depth image aligned to the colour image (16UC1 mm or 32FC1 m)"),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="the colour camera's CameraInfo"),
    ]
    node = Node(
        package="tinysam2_ros",
        executable="tracker_node",
        name="tracker_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "preset": LaunchConfiguration("preset"),
                "checkpoint": LaunchConfiguration("checkpoint"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "engine_dir": LaunchConfiguration("engine_dir"),
                "depth3d.enabled": ParameterValue(LaunchConfiguration("depth3d"), value_type=bool),
            },
        ],
        remappings=[("image", LaunchConfiguration("image")), ("prompts", LaunchConfiguration("prompts")),
                    ("detections", LaunchConfiguration("detections")),
                    ("depth", LaunchConfiguration("depth")), ("camera_info", LaunchConfiguration("camera_info"))],
    )
    return LaunchDescription(args + [node, OpaqueFunction(function=_rviz, args=[share])])
