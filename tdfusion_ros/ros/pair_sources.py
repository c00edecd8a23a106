"""Where the node's pairs come from: the builtin pairing core (``BuiltinSource``) or
message_filters' ApproximateTimeSynchronizer (``MessageFiltersSource``), behind one interface, and
the converted camera image they hand on (``Frame``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from tdfusion_ros.runtime.pairing import (
    PAIR_DISCARDED_AT_RESET,
    STAMP_WENT_BACKWARDS,
    SUPERSEDED_BY_NEWER_PAIR,
    Pairer,
    PairingConfig,
    PushResult,
    Stream,
)


@dataclass
class Frame:
    """One converted camera image and what the outputs need from its message."""

    image: np.ndarray
    stamp_ns: int
    frame_id: str
    convert_ms: float
    push_ms: float = 0.0


# ----------------------------------------------------------------------------- pair sources
class BuiltinSource:
    """Our pairing core (newest-pair policy) behind the interface the worker uses."""

    def __init__(self, config: PairingConfig) -> None:
        self.pairer: Pairer[Frame] = Pairer(config)

    def push(self, stream: Stream, frame: Frame) -> PushResult:
        return self.pairer.push(stream, frame.stamp_ns, frame)

    def record_drop(self, stream: Stream, reason: str) -> None:
        self.pairer.record_drop(stream, reason)

    def record_pair_drop(self, reason: str) -> None:
        self.pairer.record_pair_drop(reason)

    def take(self) -> tuple[Frame, Frame] | None:
        pair = self.pairer.take()
        return None if pair is None else (pair.thermal.payload, pair.rgb.payload)

    def take_unpaired(self, stream: Stream) -> Frame | None:
        single = self.pairer.take_unpaired(stream)
        return None if single is None else single.payload

    def stats(self) -> dict[str, Any]:
        return self.pairer.stats()

    def reset(self, cause: str) -> None:
        self.pairer.reset(cause)


class MessageFiltersSource:
    """message_filters' ApproximateTimeSynchronizer with the same interface and counters.

    Each message is converted once, by a per-topic callback registered before the
    synchronizer's (SimpleFilter calls callbacks in registration order); the synchronizer's
    callback looks the conversions up. A pair whose RGB stamp is not newer than the last
    pair's is dropped (``stamp_went_backwards``): message_filters does not check.
    """

    def __init__(self, keep: int) -> None:
        self._lock = threading.Lock()
        self._keep = max(4, 2 * keep)
        self._converted: dict[Stream, OrderedDict[int, tuple[Any, Frame | None]]] = {
            s: OrderedDict() for s in Stream}
        self._pending: tuple[Frame, Frame] | None = None
        self._single: dict[Stream, Frame | None] = {s: None for s in Stream}
        self._last_pair_ns: int | None = None
        self._streams = {s.value: {"received": 0, "accepted": 0, "paired": 0,
                                   "processed_alone": 0, "pending": 0, "dropped": {}}
                         for s in Stream}
        self._pairs: dict[str, int] = {"formed": 0, "admitted": 0, "taken": 0}

    def remember(self, stream: Stream, msg: Any, frame: Frame | None) -> None:
        with self._lock:
            table = self._converted[stream]
            table[id(msg)] = (msg, frame)  # holding msg keeps its id unique while listed
            while len(table) > self._keep:
                table.popitem(last=False)
            counts = self._streams[stream.value]
            counts["received"] += 1
            if frame is not None:
                counts["accepted"] += 1
                self._single[stream] = frame

    def lookup(self, stream: Stream, msg: Any) -> tuple[bool, Frame | None]:
        with self._lock:
            entry = self._converted[stream].get(id(msg))
        if entry is None or entry[0] is not msg:
            return False, None
        return True, entry[1]

    def offer_pair(self, thermal: Frame, rgb: Frame) -> bool:
        with self._lock:
            for stream in Stream:
                self._streams[stream.value]["paired"] += 1
            self._pairs["formed"] += 1
            if self._last_pair_ns is not None and rgb.stamp_ns <= self._last_pair_ns:
                self._count_pair(STAMP_WENT_BACKWARDS)
                return False
            self._last_pair_ns = rgb.stamp_ns
            if self._pending is not None:
                self._count_pair(SUPERSEDED_BY_NEWER_PAIR)
            self._pending = (thermal, rgb)
            self._pairs["admitted"] += 1
            return True

    def _count_pair(self, reason: str) -> None:
        self._pairs[reason] = self._pairs.get(reason, 0) + 1

    def record_drop(self, stream: Stream, reason: str) -> None:
        with self._lock:
            dropped = self._streams[stream.value]["dropped"]
            dropped[reason] = dropped.get(reason, 0) + 1

    def record_pair_drop(self, reason: str) -> None:
        with self._lock:
            self._count_pair(reason)

    def take(self) -> tuple[Frame, Frame] | None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._pairs["taken"] += 1
            return pending

    def take_unpaired(self, stream: Stream) -> Frame | None:
        with self._lock:
            frame, self._single[stream] = self._single[stream], None
            if frame is not None:
                self._streams[stream.value]["processed_alone"] += 1
            return frame

    def stats(self) -> dict[str, Any]:
        with self._lock:
            streams = {k: {**v, "dropped": dict(v["dropped"])} for k, v in self._streams.items()}
            pairs = dict(self._pairs)
            pairs["pending"] = int(self._pending is not None)
            return {"streams": streams, "pairs": pairs, "resets": {}, "stamp_diff": {}}

    def reset(self, cause: str) -> None:
        with self._lock:
            if self._pending is not None:  # counted like the builtin core's
                self._count_pair(PAIR_DISCARDED_AT_RESET)
            self._pending = None
            self._single = {s: None for s in Stream}
            self._last_pair_ns = None
