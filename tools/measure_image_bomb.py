import sys, time, resource
sys.path.insert(0, "tinysam2_ros/test")
import cv2, numpy as np
from test_input_limits import png_bomb
from tinysam2_ros.ros.limits import compressed_refusal
data = png_bomb(10000)
compressed_refusal(data, 16_777_216)  # first call imports PIL plugins
t = time.perf_counter(); r = compressed_refusal(data, 16_777_216); t_check = time.perf_counter() - t
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR); t_dec = time.perf_counter() - t
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"PNG {len(data) / 1024:.0f} KiB declaring {img.shape[1]}x{img.shape[0]}: header check {t_check * 1e3:.2f} ms -> {r.cause}; "
      f"cv2.imdecode {t_dec:.2f} s, peak RSS {rss0:.0f} -> {rss1:.0f} MiB")
