"""Approximate-time pairing of a thermal and an RGB stream, shared by the node and bag replay.

Why our own core: the Python ``message_filters.ApproximateTimeSynchronizer`` has no latency
offset (Humble), no drop callback and runs user callbacks under its lock. Here nothing runs
under the lock but our own bookkeeping, every message is accounted for, and the result is a
function of the stamps alone, so an offline replay reproduces what the node paired.

Stamps are integer nanoseconds. A thermal message is compared at ``stamp + thermal_offset_ns``
(its *adjusted* stamp); an RGB message at its stamp.

The matching rule (a sweep in adjusted time). Take ``x``, the earliest pending message of
either stream, and ``y``, the earliest pending message of the other stream; every pending or
future message of the other stream is at or after ``y``, so ``y`` is the only candidate for
``x`` (``d = y - x >= 0``).

* ``d > slop``: ``x`` can never be paired -> dropped, ``no_partner_within_slop``. If the other
  stream has nothing pending but its last accepted stamp is already beyond ``x + slop``, the
  same holds without waiting.
* ``x2``, the next message on ``x``'s stream, is strictly closer to ``y`` and ``y`` is also
  ``x2``'s nearest of ``{y, y2}`` (``y2`` the message after ``y``) -> ``x`` is dropped,
  ``partner_matched_closer``; ``y`` is then always paired with ``x2`` or a later, closer one.
* otherwise ``(x, y)`` is a pair. Ties go to the earlier message.

When a message becomes unpairable, i.e. how long a decision can wait: the decision on ``x``
needs ``y``, and possibly ``x2`` and ``y2``: at most one more frame of each camera. With a
``*_min_interval_ns`` (a lower bound on a camera's stamp spacing, e.g. 3/4 of its period) a
pair with ``2 * d <= min_interval`` is decided as soon as its second message arrives. A silent
camera makes the other stream wait; its queue is bounded (``queue_size``) and the oldest
message is then dropped (``queue_overflow``). At the end of a bag, ``flush()`` decides what is
left as if no further message will come.

Because each decision depends only on stamps that must have arrived, the pairs do not depend
on how the two streams interleave on arrival (within a monotonic run of stamps and without
queue overflow): the offline replay and the live node form the same pairs.

Processing policy. Formed pairs pass an optional ``max_rate_hz`` limit (on pair stamps, so it
is deterministic too), then wait for the consumer. Policy ``newest`` (the node) keeps at most
one pending pair: a newer pair replaces an untaken one (``superseded_by_newer_pair``), so
latency stays bounded when inference is slower than the cameras. Policy ``every`` (offline
replay) keeps all admitted pairs in order, up to ``queue_size``.

Bookkeeping: ``unaccounted(stats())`` is 0 for each stream and for the pairs when every
message and pair is explained by a counter (paired, alone, pending, dropped by a cause; taken,
pending, dropped before the take), so a caller can check the books under any load.

Stamps that go backwards on a stream are dropped (``stamp_went_backwards``), equal stamps too
(``duplicate_stamp``); a jump back of at least ``backwards_reset_ns`` (a bag loop, a clock
reset) resets the pairer and starts over from that message. ``reset()`` does so by hand.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Stream(str, Enum):
    THERMAL = "thermal"
    RGB = "rgb"

    @property
    def other(self) -> Stream:
        return Stream.RGB if self is Stream.THERMAL else Stream.THERMAL


# Why a message left the pairer without being paired.
NO_PARTNER_WITHIN_SLOP = "no_partner_within_slop"
PARTNER_MATCHED_CLOSER = "partner_matched_closer"
QUEUE_OVERFLOW = "queue_overflow"
STAMP_WENT_BACKWARDS = "stamp_went_backwards"
DUPLICATE_STAMP = "duplicate_stamp"
DISCARDED_AT_RESET = "discarded_at_reset"
UNPAIRED_AT_END = "unpaired_at_end"
SUPERSEDED_BY_NEWER_SINGLE = "superseded_by_newer_single"
# Why a formed pair was not handed to the consumer.
RATE_LIMITED = "rate_limited"
SUPERSEDED_BY_NEWER_PAIR = "superseded_by_newer_pair"
PAIR_QUEUE_OVERFLOW = "pair_queue_overflow"
PAIR_DISCARDED_AT_RESET = "pair_discarded_at_reset"

# Why a pair left the pairer untaken (every other ``pairs`` key but the totals is a cause the
# caller recorded after ``take()``, e.g. a conversion error).
PAIR_DROPS_BEFORE_TAKE = (RATE_LIMITED, SUPERSEDED_BY_NEWER_PAIR, PAIR_QUEUE_OVERFLOW,
                          PAIR_DISCARDED_AT_RESET)
PAIR_TOTALS = ("formed", "admitted", "taken", "pending")

POLICIES = ("newest", "every")


def seconds_to_ns(seconds: float) -> int:
    """Parameters come in seconds; the core counts integer nanoseconds (no float drift)."""
    return int(round(seconds * 1e9))


@dataclass(frozen=True)
class PairingConfig:
    """Pairing parameters; ``validate()`` names the first bad one."""

    slop_ns: int = 20_000_000
    thermal_offset_ns: int = 0
    queue_size: int = 10
    max_rate_hz: float = 0.0
    policy: str = "newest"
    thermal_min_interval_ns: int = 0
    rgb_min_interval_ns: int = 0
    backwards_reset_ns: int = 1_000_000_000
    histogram_bins: int = 20
    diff_samples: int = 4096

    def validate(self) -> PairingConfig:
        checks = [
            ("slop_ns", self.slop_ns >= 0, "must be >= 0"),
            ("queue_size", self.queue_size >= 2, "must be >= 2 (a decision may need the next "
             "message of the same stream)"),
            ("max_rate_hz", self.max_rate_hz >= 0, "must be >= 0 (0: no limit)"),
            ("policy", self.policy in POLICIES, f"must be one of {POLICIES}"),
            ("thermal_min_interval_ns", self.thermal_min_interval_ns >= 0, "must be >= 0"),
            ("rgb_min_interval_ns", self.rgb_min_interval_ns >= 0, "must be >= 0"),
            ("backwards_reset_ns", self.backwards_reset_ns >= 0, "must be >= 0 (0: never)"),
            ("histogram_bins", self.histogram_bins >= 1, "must be >= 1"),
            ("diff_samples", self.diff_samples >= 1, "must be >= 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"pairing parameter {name}={getattr(self, name)!r} {why}")
        return self

    def min_interval(self, stream: Stream) -> int:
        if stream is Stream.THERMAL:
            return self.thermal_min_interval_ns
        return self.rgb_min_interval_ns


@dataclass(frozen=True)
class Stamped(Generic[T]):
    """One accepted message: its stream, stamp, arrival index and the caller's payload."""

    stream: Stream
    stamp_ns: int
    seq: int
    payload: T


@dataclass(frozen=True)
class Pair(Generic[T]):
    """A thermal and an RGB message taken as simultaneous."""

    thermal: Stamped[T]
    rgb: Stamped[T]
    diff_ns: int  # rgb stamp - (thermal stamp + offset)
    index: int  # order of formation, 0-based, over the pairer's life

    @property
    def stamp_ns(self) -> int:
        """The pair carries the RGB stamp: outputs use the RGB header."""
        return self.rgb.stamp_ns

    @property
    def key(self) -> tuple[int, int]:
        """(thermal stamp, rgb stamp): identifies a pair across a live and an offline run."""
        return (self.thermal.stamp_ns, self.rgb.stamp_ns)


@dataclass(frozen=True)
class Drop:
    stream: Stream
    stamp_ns: int
    reason: str


@dataclass(frozen=True)
class PushResult:
    """What one ``push`` caused, for a throttled log in the node."""

    accepted: bool
    pairs_admitted: int
    drops: tuple[Drop, ...]
    reset: bool = False


@dataclass
class StampDiffStats:
    """Signed stamp differences of formed pairs: fixed histogram over [-slop, slop] + samples."""

    slop_ns: int
    bins: int
    max_samples: int
    count: int = 0
    total: int = 0
    min_ns: int | None = None
    max_ns: int | None = None
    counts: list[int] = field(default_factory=list)
    samples: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.counts = [0] * self.bins
        self.samples = deque(maxlen=self.max_samples)

    def add(self, diff_ns: int) -> None:
        self.count += 1
        self.total += diff_ns
        self.min_ns = diff_ns if self.min_ns is None else min(self.min_ns, diff_ns)
        self.max_ns = diff_ns if self.max_ns is None else max(self.max_ns, diff_ns)
        span = 2 * self.slop_ns
        index = 0 if span == 0 else (diff_ns + self.slop_ns) * self.bins // span
        self.counts[min(max(index, 0), self.bins - 1)] += 1
        self.samples.append(diff_ns)

    def edges_ns(self) -> list[int]:
        span = 2 * self.slop_ns
        return [-self.slop_ns + span * i // self.bins for i in range(self.bins + 1)]

    def percentile_ns(self, q: float) -> float | None:
        """Percentile over the most recent ``max_samples`` differences (nearest rank)."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        rank = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
        return float(ordered[rank])

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ns": self.total / self.count if self.count else None,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "p50_ns": self.percentile_ns(50),
            "p99_ns": self.percentile_ns(99),
            "histogram": {"edges_ns": self.edges_ns(), "counts": list(self.counts)},
        }


@dataclass
class StreamStats:
    received: int = 0
    accepted: int = 0
    paired: int = 0
    processed_alone: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def pair_drops_after_take(stats: dict[str, Any]) -> dict[str, int]:
    """Taken pairs the caller could not use, by cause (``record_pair_drop``), from ``stats()``."""
    return {k: int(v) for k, v in stats.get("pairs", {}).items()
            if k not in PAIR_TOTALS and k not in PAIR_DROPS_BEFORE_TAKE}


def unaccounted(stats: dict[str, Any]) -> dict[str, int]:
    """Messages and pairs whose fate ``stats()`` does not explain: 0 each when the books balance.

    Why: a test or a soak run must be able to say "every input went somewhere" from the
    counters alone, whatever the load. Per stream, every received message is paired, processed
    alone, pending or dropped by a cause; every formed pair is taken, pending or dropped before
    the take (rate limit, superseded, overflow, reset). What happens after ``take()`` is the
    caller's to count.
    """
    out: dict[str, int] = {}
    for name, s in stats.get("streams", {}).items():
        out[name] = int(s["received"]) - int(s["paired"]) - int(s["processed_alone"]) - int(
            s["pending"]) - sum(int(v) for v in s["dropped"].values())
    pairs = stats.get("pairs", {})
    out["pairs"] = int(pairs.get("formed", 0)) - int(pairs.get("taken", 0)) - int(
        pairs.get("pending", 0)) - sum(int(pairs.get(k, 0)) for k in PAIR_DROPS_BEFORE_TAKE)
    return out


class Pairer(Generic[T]):
    """Pairs thermal and RGB messages; the consumer ``take()``s pairs when it is ready.

    Thread-safe: one lock guards the state; no caller code runs under it.
    """

    def __init__(self, config: PairingConfig | None = None) -> None:
        self.config = (config or PairingConfig()).validate()
        self._lock = threading.Lock()
        self._queues: dict[Stream, deque[Stamped[T]]] = {s: deque() for s in Stream}
        self._last: dict[Stream, int | None] = {s: None for s in Stream}
        self._pending: deque[Pair[T]] = deque()
        self._seq = 0
        self._pair_index = 0
        self._next_due_ns: int | None = None
        self._streams = {s: StreamStats() for s in Stream}
        self._pairs: dict[str, int] = {"formed": 0, "admitted": 0, "taken": 0}
        self._resets: dict[str, int] = {}
        self._diffs = StampDiffStats(
            self.config.slop_ns, self.config.histogram_bins, self.config.diff_samples
        )

    # ----------------------------------------------------------------- input
    def push(self, stream: Stream | str, stamp_ns: int, payload: T) -> PushResult:
        """Offer one message; returns what it caused (pairs admitted, messages dropped)."""
        stream = Stream(stream)
        stamp_ns = int(stamp_ns)
        with self._lock:
            drops: list[Drop] = []
            stats = self._streams[stream]
            stats.received += 1
            last = self._last[stream]
            did_reset = False
            if last is not None and stamp_ns <= last:
                jump = last - stamp_ns
                if stamp_ns < last and 0 < self.config.backwards_reset_ns <= jump:
                    self._reset_locked("stamp_jumped_back", drops)
                    did_reset = True
                else:
                    reason = DUPLICATE_STAMP if stamp_ns == last else STAMP_WENT_BACKWARDS
                    stats.drop(reason)
                    drops.append(Drop(stream, stamp_ns, reason))
                    return PushResult(False, 0, tuple(drops))
            self._last[stream] = stamp_ns
            stats.accepted += 1
            self._queues[stream].append(Stamped(stream, stamp_ns, self._seq, payload))
            self._seq += 1
            admitted = self._resolve(final=False, drops=drops)
            queue = self._queues[stream]
            while len(queue) > self.config.queue_size:
                self._drop(queue.popleft(), QUEUE_OVERFLOW, drops)
            return PushResult(True, admitted, tuple(drops), did_reset)

    def record_drop(self, stream: Stream | str, reason: str, count: int = 1) -> None:
        """Count ``count`` messages the caller rejected before ``push`` (bad encoding, wrong
        size...)."""
        with self._lock:
            stats = self._streams[Stream(stream)]
            stats.received += count
            stats.drop(reason, count)

    def record_pair_drop(self, reason: str) -> None:
        """Count a taken pair the caller could not process (e.g. a conversion error)."""
        with self._lock:
            self._pairs[reason] = self._pairs.get(reason, 0) + 1

    # ---------------------------------------------------------------- output
    def take(self) -> Pair[T] | None:
        """The pair to process now: the newest (policy ``newest``) or oldest (``every``)."""
        with self._lock:
            if not self._pending:
                return None
            self._pairs["taken"] += 1
            return self._pending.popleft()

    def take_unpaired(self, stream: Stream | str) -> Stamped[T] | None:
        """Newest pending message of one stream, for single-modality fallback.

        Used while the other camera is silent; older pending messages of that stream are
        counted ``superseded_by_newer_single``, the returned one ``processed_alone``.
        """
        stream = Stream(stream)
        with self._lock:
            queue = self._queues[stream]
            if not queue:
                return None
            newest = queue.pop()
            while queue:
                self._drop(queue.popleft(), SUPERSEDED_BY_NEWER_SINGLE, None)
            self._streams[stream].processed_alone += 1
            return newest

    def flush(self) -> int:
        """End of input: decide what is left as if no message will follow; returns admitted."""
        with self._lock:
            drops: list[Drop] = []
            admitted = self._resolve(final=True, drops=drops)
            for queue in self._queues.values():
                while queue:
                    self._drop(queue.popleft(), UNPAIRED_AT_END, drops)
            return admitted

    def reset(self, cause: str = "manual") -> None:
        """Forget pending messages, pairs and last stamps (clock reset, bag loop); keep stats."""
        with self._lock:
            self._reset_locked(cause, None)

    # ----------------------------------------------------------------- state
    @property
    def pending_pairs(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_messages(self, stream: Stream | str) -> int:
        with self._lock:
            return len(self._queues[Stream(stream)])

    def stats(self) -> dict[str, Any]:
        """Counters and stamp-difference statistics as plain data (diagnostics, reports)."""
        with self._lock:
            streams = {}
            for stream, s in self._streams.items():
                streams[stream.value] = {
                    "received": s.received,
                    "accepted": s.accepted,
                    "paired": s.paired,
                    "processed_alone": s.processed_alone,
                    "pending": len(self._queues[stream]),
                    "dropped": dict(sorted(s.dropped.items())),
                }
            pairs = dict(self._pairs)
            pairs["pending"] = len(self._pending)
            return {
                "streams": streams,
                "pairs": pairs,
                "resets": dict(self._resets),
                "stamp_diff": self._diffs.as_dict(),
            }

    # -------------------------------------------------------------- internals
    def _adjusted(self, message: Stamped[T]) -> int:
        if message.stream is Stream.THERMAL:
            return message.stamp_ns + self.config.thermal_offset_ns
        return message.stamp_ns

    def _adjusted_last(self, stream: Stream) -> int | None:
        last = self._last[stream]
        if last is None or stream is Stream.RGB:
            return last
        return last + self.config.thermal_offset_ns

    def _drop(self, message: Stamped[T], reason: str, drops: list[Drop] | None) -> None:
        self._streams[message.stream].drop(reason)
        if drops is not None:
            drops.append(Drop(message.stream, message.stamp_ns, reason))

    def _reset_locked(self, cause: str, drops: list[Drop] | None) -> None:
        for queue in self._queues.values():
            while queue:
                self._drop(queue.popleft(), DISCARDED_AT_RESET, drops)
        if self._pending:
            self._pairs[PAIR_DISCARDED_AT_RESET] = (
                self._pairs.get(PAIR_DISCARDED_AT_RESET, 0) + len(self._pending)
            )
            self._pending.clear()
        self._last = {s: None for s in Stream}
        self._next_due_ns = None
        self._resets[cause] = self._resets.get(cause, 0) + 1

    def _resolve(self, final: bool, drops: list[Drop]) -> int:
        admitted = 0
        while True:
            step = self._decide(final, drops)
            if step is None:
                return admitted
            admitted += step

    def _decide(self, final: bool, drops: list[Drop]) -> int | None:
        """One sweep step: returns pairs admitted (0 or 1), or None when it must wait."""
        queues = self._queues
        thermal, rgb = queues[Stream.THERMAL], queues[Stream.RGB]
        if not thermal and not rgb:
            return None
        if thermal and rgb:
            first = Stream.THERMAL
            if self._adjusted(rgb[0]) < self._adjusted(thermal[0]):
                first = Stream.RGB
        else:
            first = Stream.THERMAL if thermal else Stream.RGB
        own, other = queues[first], queues[first.other]
        x = own[0]
        ax = self._adjusted(x)
        slop = self.config.slop_ns
        if not other:
            last_other = self._adjusted_last(first.other)
            if last_other is not None and last_other > ax + slop:
                self._drop(own.popleft(), NO_PARTNER_WITHIN_SLOP, drops)
                return 0
            return None  # wait for the other stream (flush() sweeps what remains)
        y = other[0]
        ay = self._adjusted(y)
        d = ay - ax
        if d > slop:
            self._drop(own.popleft(), NO_PARTNER_WITHIN_SLOP, drops)
            return 0
        h_own = self.config.min_interval(first)
        if not (h_own and 2 * d <= h_own):
            if len(own) < 2:
                if not final:
                    return None
            else:
                ax2 = self._adjusted(own[1])
                d2 = abs(ay - ax2)
                if d2 < d:
                    prefers = self._prefers(ax2, ay, d2, first.other, final)
                    if prefers is None:
                        return None
                    if prefers:
                        self._drop(own.popleft(), PARTNER_MATCHED_CLOSER, drops)
                        return 0
        own.popleft()
        other.popleft()
        return self._form(x, y)

    def _prefers(
        self, ax2: int, ay: int, d2: int, y_stream: Stream, final: bool
    ) -> bool | None:
        """Is y the nearest of {y, y2} for x2? None: undecidable until y2 arrives."""
        if ax2 <= ay:
            return True
        h_other = self.config.min_interval(y_stream)
        if h_other and ay + h_other - ax2 >= d2:
            return True
        queue = self._queues[y_stream]
        if len(queue) >= 2:
            return d2 <= abs(self._adjusted(queue[1]) - ax2)
        return True if final else None

    def _form(self, x: Stamped[T], y: Stamped[T]) -> int:
        thermal, rgb = (x, y) if x.stream is Stream.THERMAL else (y, x)
        diff = rgb.stamp_ns - (thermal.stamp_ns + self.config.thermal_offset_ns)
        pair = Pair(thermal, rgb, diff, self._pair_index)
        self._pair_index += 1
        self._streams[Stream.THERMAL].paired += 1
        self._streams[Stream.RGB].paired += 1
        self._pairs["formed"] += 1
        self._diffs.add(diff)
        if not self._rate_allows(pair.stamp_ns):
            self._pairs[RATE_LIMITED] = self._pairs.get(RATE_LIMITED, 0) + 1
            return 0
        if self.config.policy == "newest":
            if self._pending:
                self._pairs[SUPERSEDED_BY_NEWER_PAIR] = (
                    self._pairs.get(SUPERSEDED_BY_NEWER_PAIR, 0) + len(self._pending)
                )
                self._pending.clear()
        elif len(self._pending) >= self.config.queue_size:
            self._pending.popleft()
            self._pairs[PAIR_QUEUE_OVERFLOW] = self._pairs.get(PAIR_QUEUE_OVERFLOW, 0) + 1
        self._pending.append(pair)
        self._pairs["admitted"] += 1
        return 1

    def _rate_allows(self, stamp_ns: int) -> bool:
        """Admit on a grid of 1/max_rate in stamp time: average <= max_rate, spacing >= half."""
        if not self.config.max_rate_hz:
            return True
        period = int(round(1e9 / self.config.max_rate_hz))
        if self._next_due_ns is not None and stamp_ns < self._next_due_ns:
            return False
        grid = stamp_ns + period if self._next_due_ns is None else self._next_due_ns + period
        self._next_due_ns = max(grid, stamp_ns + period // 2)
        return True
