"""TinySAM 2 video object tracking for ROS 2.

The ROS interfaces live in their own package, ``tinysam2_ros_msgs``; this package
holds the model, the tracker and the node.
"""
__version__ = "0.1.0"
