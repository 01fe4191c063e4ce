"""tinysam2_ros: the tracker node and the `tinysam2` command (ament_python).

colcon builds it as a ROS package (share/ gets launch, config, engine, models;
lib/tinysam2_ros gets the executables `ros2 run` finds); plain pip also works.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tinysam2_ros"


def _share(folder: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{folder}", [f for f in glob(f"{folder}/*") if not f.endswith("__pycache__")])


setup(
    name=PACKAGE,
    version="0.1.0",
    description="TinySAM 2 promptable video object tracking as a ROS 2 node",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={"tinysam2_ros.backends": ["tensorrt_onnx_ops.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        _share("launch"),
        _share("config"),
        _share("engine"),
        _share("models"),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools", "numpy", "torch", "opencv-python-headless", "pillow", "safetensors", "tqdm"],
    zip_safe=False,
    maintainer="tinysam2_ros maintainers",
    maintainer_email="maintainers@tinysam2-ros.dev",
    license="Apache-2.0",
    extras_require={"export": ["onnx", "onnxruntime"], "train": ["pycocotools"], "test": ["pytest", "pycocotools"]},
    entry_points={
        "console_scripts": [
            "tracker_node = tinysam2_ros.ros.tracker_node:main",
            "tinysam2 = tinysam2_ros.cli:main",
        ],
    },
)
