"""Point the ROS 2 wheels' CMake files at this interpreter's Python and NumPy headers.

The PyPI ROS 2 wheels were built under /opt/python/cp311-cp311; that path is baked
into <venv>/share/*/cmake/*.cmake and CMake refuses non-existent include dirs.
Idempotent: run it after every `pip install` of ROS wheels.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy


def main(prefix: str) -> int:
    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    pattern = re.compile(r"/opt/python/cp3\d+-cp3\d+[^;\"\s)]*")
    changed = 0
    for path in Path(prefix, "share").glob("*/cmake/*.cmake"):
        text = path.read_text(errors="replace")

        def repl(match: re.Match) -> str:
            return np_include if "numpy" in match.group(0) else py_include

        new = pattern.sub(repl, text)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fix_ros_wheel_cmake: rewrote {changed} CMake file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
