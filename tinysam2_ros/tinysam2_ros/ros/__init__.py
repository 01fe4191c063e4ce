"""ROS 2 glue: image message conversion, rendering and the tracking node."""
