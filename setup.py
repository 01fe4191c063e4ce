"""pip-installable Python side of tinysam2_ros (the `tinysam2` command).

colcon builds the ROS package through CMakeLists.txt (rosidl interfaces + these
modules); this file serves `pip install -e .` in a plain virtual environment.
"""
from setuptools import find_packages, setup

setup(
    name="tinysam2_ros",
    version="0.1.0",
    description="TinySAM 2 promptable video object tracking as a ROS 2 node",
    packages=find_packages(include=["tinysam2_ros", "tinysam2_ros.*"]),
    package_data={"tinysam2_ros.backends": ["tensorrt_onnx_ops.txt"]},
    python_requires=">=3.10",
    install_requires=["numpy", "torch", "opencv-python-headless", "pillow", "safetensors", "tqdm"],
    extras_require={"export": ["onnx", "onnxruntime"], "train": ["pycocotools"], "test": ["pytest", "pycocotools"]},
    entry_points={"console_scripts": ["tinysam2 = tinysam2_ros.cli:main"]},
)
