"""Pair each processed colour frame with the depth image of the nearest stamp.

The node processes only the newest colour frame (older ones are dropped), so pairing
happens when a frame is processed, not when it arrives: depth images wait here for
``keep_s`` seconds (by their stamps) and the one nearest the frame's stamp is taken if
it is within ``tolerance``. Items are stored undecoded, so a flood costs one append
each; arrivals above ``max_rate`` per second are refused and counted.
(``message_filters`` would pair on arrival and is not installed everywhere; this is
the few lines it would replace.)
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Any


class DepthBuffer:
    """Recent (stamp, item) pairs, sorted by stamp, thread-safe."""

    def __init__(self, keep_s: float = 2.0, max_items: int = 256, max_rate: float = 200.0) -> None:
        self.keep_s = float(keep_s)
        self.max_items = int(max_items)
        self.max_rate = float(max_rate)
        self._stamps: list[float] = []
        self._items: list[Any] = []
        self._arrivals: deque[float] = deque()
        self._lock = threading.Lock()
        self.flooded = 0  # refused for arriving too fast
        self.last_arrival = -float("inf")  # monotonic time of the newest accepted item

    def __len__(self) -> int:
        return len(self._stamps)

    def put(self, stamp: float, item: Any, now: float | None = None) -> bool:
        """Store an item; False (and counted) when it arrives faster than ``max_rate``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._arrivals and self._arrivals[0] < now - 1.0:
                self._arrivals.popleft()
            if len(self._arrivals) >= self.max_rate:
                self.flooded += 1
                return False
            self._arrivals.append(now)
            self.last_arrival = now
            i = bisect.bisect_right(self._stamps, stamp)
            self._stamps.insert(i, stamp)
            self._items.insert(i, item)
            newest = self._stamps[-1]
            cut = bisect.bisect_left(self._stamps, newest - self.keep_s)  # older than keep_s behind the newest
            cut = max(cut, len(self._stamps) - self.max_items)
            if cut > 0:
                del self._stamps[:cut]
                del self._items[:cut]
            return True

    def nearest(self, stamp: float, tolerance: float) -> tuple[Any | None, float | None]:
        """(item, |stamp difference|) of the nearest stamp; item None when beyond ``tolerance``
        (the difference is then still given, or None when the buffer is empty)."""
        with self._lock:
            if not self._stamps:
                return None, None
            i = bisect.bisect_left(self._stamps, stamp)
            best = min((j for j in (i - 1, i) if 0 <= j < len(self._stamps)), key=lambda j: abs(self._stamps[j] - stamp))
            dt = abs(self._stamps[best] - stamp)
            return (self._items[best] if dt <= tolerance else None), dt

    def newest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()
