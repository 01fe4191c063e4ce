"""A demo image source: publishes a video file, a camera or a folder of images as
sensor_msgs/Image (bgr8) at a fixed rate, the way a camera driver would."""
from __future__ import annotations

from pathlib import Path

import cv2
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from .image_codec import rgb_to_image_msg

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class FrameReader:
    """Frames (RGB uint8) from a video file, a camera index or a folder of images."""

    def __init__(self, source: str) -> None:
        self.source = source
        path = Path(source)
        self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else None
        self._index = 0
        self._cap = None
        if self._files is None:
            self._cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
            if not self._cap.isOpened():
                raise FileNotFoundError(f"cannot open video source {source!r}")
        elif not self._files:
            raise FileNotFoundError(f"no images in {source}")

    def read(self):
        """The next RGB frame, or None at the end."""
        if self._files is not None:
            if self._index >= len(self._files):
                return None
            bgr = cv2.imread(str(self._files[self._index]), cv2.IMREAD_COLOR)
            self._index += 1
        else:
            ok, bgr = self._cap.read()
            if not ok:
                return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def rewind(self) -> None:
        self._index = 0
        if self._cap is not None:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)


class VideoSource(Node):
    def __init__(self, source: str, topic: str = "image", rate_hz: float = 10.0, loop: bool = False,
                 frame_id: str = "camera", **kwargs) -> None:
        super().__init__("video_source", **kwargs)
        self.reader = FrameReader(source)
        self.loop = loop
        self.frame_id = frame_id
        self.published = 0
        self.finished = False
        self.pub = self.create_publisher(Image, topic, qos_profile_sensor_data)
        self.timer = self.create_timer(1.0 / rate_hz, self._tick)

    def _tick(self) -> None:
        rgb = self.reader.read()
        if rgb is None and self.loop:
            self.reader.rewind()
            rgb = self.reader.read()
        if rgb is None:
            self.finished = True
            self.timer.cancel()
            return
        header = Header(frame_id=self.frame_id)
        header.stamp = self.get_clock().now().to_msg()
        self.pub.publish(rgb_to_image_msg(rgb, header, encoding="bgr8"))
        self.published += 1
