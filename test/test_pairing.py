"""The pairing core: which messages pair, why the others do not, and what the consumer gets."""

from __future__ import annotations

import bisect
import random
import threading
from pathlib import Path

import pytest

from tdfusion_ros.runtime.pairing import (
    DUPLICATE_STAMP,
    NO_PARTNER_WITHIN_SLOP,
    PARTNER_MATCHED_CLOSER,
    QUEUE_OVERFLOW,
    RATE_LIMITED,
    STAMP_WENT_BACKWARDS,
    SUPERSEDED_BY_NEWER_PAIR,
    UNPAIRED_AT_END,
    Pairer,
    PairingConfig,
    Stream,
    pair_drops_after_take,
    seconds_to_ns,
    unaccounted,
)

MS = 1_000_000
T, R = Stream.THERMAL, Stream.RGB


def camera(rate_hz: float, count: int, rng: random.Random, jitter_ns: int = 2 * MS,
           start_ns: int = 1_000_000_000) -> list[int]:
    return [start_ns + round(i * 1e9 / rate_hz) + rng.randint(-jitter_ns, jitter_ns)
            for i in range(count)]


def play(pairer: Pairer, events: list[tuple[Stream, int]], flush: bool = True) -> list:
    """Push events in order, taking every admitted pair at once (an offline consumer)."""
    keys = []
    for stream, stamp in events:
        pairer.push(stream, stamp, None)
        while (pair := pairer.take()) is not None:
            keys.append(pair.key)
    if flush:
        pairer.flush()
        while (pair := pairer.take()) is not None:
            keys.append(pair.key)
    return keys


def interleave(thermal: list[int], rgb: list[int], rng: random.Random) -> list:
    """A random arrival order that keeps each stream's own order."""
    events, i, j = [], 0, 0
    while i < len(thermal) or j < len(rgb):
        if j == len(rgb) or (i < len(thermal) and rng.random() < 0.5):
            events.append((T, thermal[i]))
            i += 1
        else:
            events.append((R, rgb[j]))
            j += 1
    return events


def by_arrival(thermal: list[int], rgb: list[int], thermal_latency_ns: int) -> list:
    """Arrival order of a real rig: each message arrives a transport delay after capture."""
    events = [(s + thermal_latency_ns, 0, T, s) for s in thermal]
    events += [(s + 3 * MS, 1, R, s) for s in rgb]
    return [(stream, stamp) for _, _, stream, stamp in sorted(events)]


def accounted(stats: dict) -> None:
    for name, s in stats["streams"].items():
        total = s["paired"] + s["processed_alone"] + s["pending"] + sum(s["dropped"].values())
        assert total == s["received"], (name, s)
    assert unaccounted(stats) == {"thermal": 0, "rgb": 0, "pairs": 0}, stats


def every(**kwargs) -> Pairer:
    return Pairer(PairingConfig(policy="every", **kwargs))


# ------------------------------------------------------------------------ who pairs with whom
def test_equal_rates_with_thermal_offset_pair_one_to_one() -> None:
    rng = random.Random(0)
    rgb = camera(30, 60, rng)
    thermal = [s + 40 * MS + rng.randint(-MS, MS) for s in rgb]  # thermal stamped 40 ms late
    pairer = every(slop_ns=10 * MS, thermal_offset_ns=-40 * MS)
    keys = play(pairer, by_arrival(thermal, rgb, 50 * MS))
    assert keys == list(zip(thermal, rgb))
    stats = pairer.stats()
    assert stats["stamp_diff"]["count"] == 60 and abs(stats["stamp_diff"]["mean_ns"]) < MS
    accounted(stats)
    # without the offset, 40 ms > one RGB period: thermal frames pair with the wrong RGB frame
    wrong = play(every(slop_ns=10 * MS), by_arrival(thermal, rgb, 50 * MS))
    assert wrong and not set(wrong) & set(keys)


@pytest.mark.parametrize("min_intervals", [(0, 0), (80 * MS, 25 * MS)])
def test_pairs_depend_on_stamps_not_on_arrival_interleaving(min_intervals) -> None:
    rng = random.Random(1)
    thermal, rgb = camera(9, 45, rng), camera(30, 150, rng)
    slop = 15 * MS
    # the rule's definition for a slower thermal camera: each thermal frame with its nearest
    # RGB frame (the earlier one on a tie), when within the slop
    expected = []
    for t in thermal:
        k = bisect.bisect_left(rgb, t)
        best = min((rgb[x] for x in (k - 1, k) if 0 <= x < len(rgb)), key=lambda v: abs(v - t))
        if abs(best - t) <= slop:
            expected.append((t, best))
    assert len(expected) > 40
    for seed in range(6):
        pairer = every(slop_ns=slop, queue_size=400, thermal_min_interval_ns=min_intervals[0],
                       rgb_min_interval_ns=min_intervals[1])
        keys = play(pairer, interleave(thermal, rgb, random.Random(seed)))
        assert keys == expected, seed


def test_half_period_phase_pairs_every_frame() -> None:
    """Streams offset by half a period with jitter: nearest-neighbour ambiguity, no loss."""
    thermal = [0, 31, 62, 95, 128]
    rgb = [0, 15, 48, 80, 112]
    keys = play(every(slop_ns=20 * MS), interleave([t * MS for t in thermal],
                                                   [r * MS for r in rgb], random.Random(2)))
    assert keys == [(0, 0), (31 * MS, 15 * MS), (62 * MS, 48 * MS), (95 * MS, 80 * MS),
                    (128 * MS, 112 * MS)]


def test_a_closer_successor_takes_the_partner() -> None:
    pairer = every(slop_ns=30 * MS)
    result = [pairer.push(T, 33 * MS, "t1"), pairer.push(R, 60 * MS, "r1"),
              pairer.push(T, 66 * MS, "t2"), pairer.push(R, 170 * MS, "r2")]
    assert result[2].drops == ()  # t2 is closer to r1, but might t2 prefer the next RGB?
    assert [(d.stream, d.stamp_ns, d.reason) for d in result[3].drops] == [
        (T, 33 * MS, PARTNER_MATCHED_CLOSER)]
    pair = pairer.take()
    assert (pair.thermal.payload, pair.rgb.payload, pair.diff_ns) == ("t2", "r1", -6 * MS)


def test_no_partner_within_slop_is_decided_without_waiting() -> None:
    pairer = every(slop_ns=10 * MS)
    pairer.push(R, 100 * MS, None)
    result = pairer.push(T, 50 * MS, None)  # RGB already beyond 50 + 10 ms: hopeless
    assert [d.reason for d in result.drops] == [NO_PARTNER_WITHIN_SLOP]
    assert pairer.stats()["streams"]["thermal"]["dropped"] == {NO_PARTNER_WITHIN_SLOP: 1}
    pairer.push(T, 95 * MS, None)
    pairer.push(T, 140 * MS, None)
    assert pairer.take().key == (95 * MS, 100 * MS)


def test_min_interval_decides_a_pair_when_its_second_message_arrives() -> None:
    plain = every(slop_ns=10 * MS)
    quick = every(slop_ns=10 * MS, thermal_min_interval_ns=25 * MS, rgb_min_interval_ns=25 * MS)
    for pairer in (plain, quick):
        pairer.push(T, 1000 * MS, None)
    assert plain.push(R, 1002 * MS, None).pairs_admitted == 0  # must see the next frame
    assert quick.push(R, 1002 * MS, None).pairs_admitted == 1
    assert plain.push(T, 1033 * MS, None).pairs_admitted == 1
    assert plain.take().key == quick.take().key == (1000 * MS, 1002 * MS)


def test_real_pairs_travel_as_payloads(shared_data: Path) -> None:
    """The 46 MSRS pairs as real sensor_msgs/Image payloads, 10 Hz with jitter and offset."""
    import cv2

    from tdfusion_ros.ros.ros_image import array_to_image, image_to_bgr8, image_to_mono

    names = sorted(p.stem for p in (shared_data / "det" / "ir").glob("*.png"))
    rng = random.Random(3)
    events = []
    for i, name in enumerate(names):
        rgb_stamp = 5_000_000_000 + i * 100 * MS + rng.randint(-3, 3) * MS
        th_stamp = rgb_stamp + 25 * MS + rng.randint(-2, 2) * MS
        ir = cv2.imread(str(shared_data / "det" / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(shared_data / "det" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
        events.append((th_stamp + 30 * MS, T, th_stamp,
                       array_to_image(ir[::8, ::8].copy(), "mono8", th_stamp, name)))
        events.append((rgb_stamp + 2 * MS, R, rgb_stamp,
                       array_to_image(vi[::8, ::8].copy(), "rgb8", rgb_stamp, name)))
    pairer = Pairer(PairingConfig(slop_ns=10 * MS, thermal_offset_ns=-25 * MS, policy="every"))
    pairs = []
    for _, stream, stamp, msg in sorted(events, key=lambda e: e[:3]):
        pairer.push(stream, stamp, msg)
        while (pair := pairer.take()) is not None:
            pairs.append(pair)
    pairer.flush()
    pairs += [p for p in iter(pairer.take, None)]
    assert [p.rgb.payload.header.frame_id for p in pairs] == names
    for pair in pairs:
        assert pair.thermal.payload.header.frame_id == pair.rgb.payload.header.frame_id
        thermal, rgb = image_to_mono(pair.thermal.payload), image_to_bgr8(pair.rgb.payload)
        assert thermal.shape == rgb.shape[:2] == (60, 80)


# ------------------------------------------------------------------------ consumer policy
def test_newest_policy_keeps_one_pending_pair() -> None:
    pairer = Pairer(PairingConfig(slop_ns=5 * MS, thermal_min_interval_ns=20 * MS,
                                  rgb_min_interval_ns=20 * MS))
    for i in range(10):
        pairer.push(R, i * 33 * MS, i)
        pairer.push(T, i * 33 * MS + MS, i)
        assert pairer.pending_pairs <= 1
    pair = pairer.take()
    assert pair.rgb.payload == 9 and pairer.take() is None
    pairs = pairer.stats()["pairs"]
    assert pairs["formed"] == 10 and pairs[SUPERSEDED_BY_NEWER_PAIR] == 9 and pairs["taken"] == 1


def test_every_policy_hands_out_all_pairs_in_order() -> None:
    pairer = every(slop_ns=5 * MS, thermal_min_interval_ns=20 * MS, rgb_min_interval_ns=20 * MS)
    for i in range(5):
        pairer.push(R, i * 33 * MS, i)
        pairer.push(T, i * 33 * MS + MS, i)
    assert [(p.rgb.payload, p.index) for p in iter(pairer.take, None)] == [
        (i, i) for i in range(5)]


def test_max_rate_limits_on_pair_stamps() -> None:
    rng = random.Random(4)
    rgb = camera(30, 90, rng)  # 3 s
    thermal = [s + rng.randint(-MS, MS) for s in rgb]
    pairer = every(slop_ns=5 * MS, max_rate_hz=10.0)
    keys = play(pairer, by_arrival(thermal, rgb, 20 * MS))
    pairs = pairer.stats()["pairs"]
    assert pairs["formed"] == 90 and 29 <= len(keys) <= 31
    assert pairs[RATE_LIMITED] == 90 - len(keys)
    gaps = [b[1] - a[1] for a, b in zip(keys, keys[1:])]
    assert min(gaps) >= 50 * MS  # never faster than half the period
    again = every(slop_ns=5 * MS, max_rate_hz=10.0)
    assert play(again, by_arrival(thermal, rgb, 60 * MS)) == keys  # another interleaving


# ------------------------------------------------------------------------ faults and counters
def test_backwards_and_duplicate_stamps_are_dropped_and_counted() -> None:
    pairer = every(slop_ns=5 * MS)
    assert pairer.push(R, 100 * MS, None).accepted
    assert not pairer.push(R, 90 * MS, None).accepted
    assert not pairer.push(R, 100 * MS, None).accepted
    dropped = pairer.stats()["streams"]["rgb"]["dropped"]
    assert dropped == {STAMP_WENT_BACKWARDS: 1, DUPLICATE_STAMP: 1}


def test_bag_loop_resets_and_pairing_resumes() -> None:
    rng = random.Random(5)
    rgb = camera(30, 30, rng)
    thermal = [s + rng.randint(-MS, MS) for s in rgb]
    one_loop = interleave(thermal, rgb, rng)
    pairer = every(slop_ns=5 * MS, backwards_reset_ns=seconds_to_ns(0.5))
    keys = play(pairer, one_loop + one_loop)
    stats = pairer.stats()
    assert stats["resets"] == {"stamp_jumped_back": 1}
    assert len(keys) >= 2 * 30 - 3 and set(keys) == set(zip(thermal, rgb))
    accounted(stats)
    # with automatic reset off, the second loop is dropped until the node resets by hand
    manual = every(slop_ns=5 * MS, backwards_reset_ns=0)
    assert len(play(manual, one_loop + one_loop[:10], flush=False)) >= 28
    assert manual.stats()["streams"]["rgb"]["dropped"].get(STAMP_WENT_BACKWARDS, 0) > 0
    manual.reset()
    assert len(play(manual, one_loop)) == 30
    assert manual.stats()["resets"] == {"manual": 1}
    accounted(manual.stats())


def test_silent_camera_bounds_the_queue_then_recovers() -> None:
    pairer = Pairer(PairingConfig(slop_ns=5 * MS, queue_size=10))
    for i in range(50):  # the thermal camera is silent
        pairer.push(R, i * 33 * MS, None)
    stats = pairer.stats()["streams"]["rgb"]
    assert stats["pending"] == 10 and stats["dropped"] == {QUEUE_OVERFLOW: 40}
    for i in range(50, 60):  # it comes back
        pairer.push(R, i * 33 * MS, None)
        pairer.push(T, i * 33 * MS + MS, None)
    # frame 59 still waits for the next frame to rule out a closer match
    assert pairer.take().key == (58 * 33 * MS + MS, 58 * 33 * MS)
    stats = pairer.stats()
    # frames 41-49 could never pair; frame 40 overflowed when frame 50 arrived before thermal
    assert stats["streams"]["rgb"]["dropped"] == {QUEUE_OVERFLOW: 41, NO_PARTNER_WITHIN_SLOP: 9}
    accounted(stats)


def test_take_unpaired_serves_single_modality_fallback() -> None:
    pairer = Pairer()
    for i in range(4):
        pairer.push(R, i * 33 * MS, i)
    single = pairer.take_unpaired(R)
    assert single.payload == 3 and pairer.take_unpaired(R) is None
    stats = pairer.stats()
    assert stats["streams"]["rgb"]["processed_alone"] == 1
    accounted(stats)


def test_flush_decides_the_tail_and_counts_leftovers() -> None:
    pairer = every(slop_ns=5 * MS)
    pairer.push(T, 0, None)
    pairer.push(R, MS, None)
    pairer.push(R, 40 * MS, None)
    assert pairer.take() is None  # (0, 1 ms) waits for the next thermal frame
    assert pairer.flush() == 1 and pairer.take().key == (0, MS)
    assert pairer.stats()["streams"]["rgb"]["dropped"] == {UNPAIRED_AT_END: 1}


def test_random_faults_keep_every_message_accounted_for() -> None:
    rng = random.Random(6)
    pairer = Pairer(PairingConfig(slop_ns=8 * MS, queue_size=4, max_rate_hz=12.0,
                                  thermal_offset_ns=3 * MS, backwards_reset_ns=2000 * MS))
    stamps = {T: 0, R: 0}
    for _ in range(3000):
        stream = rng.choice((T, R))
        step = rng.choice((-3000, -5, 0, 10, 20, 33, 33, 33, 100)) * MS
        stamps[stream] = max(0, stamps[stream] + step)
        pairer.push(stream, stamps[stream], None)
        if rng.random() < 0.3:
            pairer.take()
        if rng.random() < 0.01:
            pairer.reset()
        if rng.random() < 0.02:
            pairer.record_drop(stream, "bad_encoding")
        accounted(pairer.stats())
    pairer.flush()
    stats = pairer.stats()
    accounted(stats)
    diff = stats["stamp_diff"]
    assert sum(diff["histogram"]["counts"]) == diff["count"] == stats["pairs"]["formed"]
    assert all(abs(v) <= 8 * MS for v in (diff["min_ns"], diff["max_ns"]))


def test_books_balance_through_every_fate() -> None:
    """unaccounted() stays 0 while pairs are formed, taken, superseded, rate-limited, discarded
    at a reset, dropped by the caller, and single images are taken for the fallback."""
    rng = random.Random(3)
    pairer = Pairer(PairingConfig(slop_ns=10 * MS, queue_size=4, max_rate_hz=20.0))
    stamp = 0
    for _ in range(2000):
        stamp += 33 * MS
        if rng.random() < 0.9:
            pairer.push(T, stamp + rng.randint(-3, 3) * MS, None)
        if rng.random() < 0.9:
            pairer.push(R, stamp, None)
        if rng.random() < 0.05:
            pairer.record_drop(rng.choice((T, R)), "bad_encoding")
        if rng.random() < 0.4 and pairer.take() is not None and rng.random() < 0.1:
            pairer.record_pair_drop("size_mismatch")
        if rng.random() < 0.03:
            pairer.take_unpaired(rng.choice((T, R)))
        if rng.random() < 0.03:
            pairer.reset()
        accounted(pairer.stats())
    stats = pairer.stats()
    for cause in (SUPERSEDED_BY_NEWER_PAIR, RATE_LIMITED, "pair_discarded_at_reset"):
        assert stats["pairs"].get(cause), (cause, stats["pairs"])
    assert pair_drops_after_take(stats) == {"size_mismatch": stats["pairs"]["size_mismatch"]}
    assert stats["streams"]["rgb"]["processed_alone"] and stats["pairs"]["taken"] > 100


def test_concurrent_push_and_take_stay_consistent() -> None:
    pairer = Pairer(PairingConfig(slop_ns=5 * MS))
    taken = []

    def feed(stream: Stream, offset: int) -> None:
        for i in range(2000):
            pairer.push(stream, i * 33 * MS + offset, i)

    def consume() -> None:
        for _ in range(4000):
            if (pair := pairer.take()) is not None:
                taken.append(pair)

    threads = [threading.Thread(target=feed, args=(T, MS)), threading.Thread(target=feed,
               args=(R, 0)), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pairer.stats()
    accounted(stats)
    assert all(p.thermal.payload == p.rgb.payload for p in taken)
    assert stats["pairs"]["taken"] == len(taken)


def test_config_errors_name_the_parameter() -> None:
    for bad, name in ((dict(slop_ns=-1), "slop_ns"), (dict(queue_size=1), "queue_size"),
                      (dict(policy="all"), "policy"), (dict(max_rate_hz=-2.0), "max_rate_hz")):
        with pytest.raises(ValueError, match=f"pairing parameter {name}="):
            Pairer(PairingConfig(**bad))
    assert seconds_to_ns(0.0333) == 33_300_000
