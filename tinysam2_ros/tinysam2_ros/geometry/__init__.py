"""Plain-Python 3D from depth for tracks (no ROS): camera model, depth decoding, pairing, estimates."""
