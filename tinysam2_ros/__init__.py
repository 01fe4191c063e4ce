"""TinySAM 2 video tracking for ROS 2."""
