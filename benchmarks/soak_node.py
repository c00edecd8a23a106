"""Soak the fusion node: two unsynchronised cameras for minutes, a row per minute, a verdict.

    python benchmarks/soak_node.py [--duration 600] [--interval 60] [--warmup 30]
        [--bundle models/default] [--config config/fusion.yaml] [--json OUT.json]

Why: a node that is fine for 2 minutes can still leak memory, file descriptors or threads, or
slow down, over a robot's working day. This plays an RGB camera (30 Hz, bgr8 640x480) and a
thermal camera (9 Hz, mono16 640x480), each on its own thread and clock phase (stamped when it
"exposes", so the two never line up), into ``fusion_node`` started as the launch file starts it
(``bench_node.start_node``), and prints a row every ``--interval`` seconds and at the end:

* the node process: VmRSS (/proc/PID/status), open file descriptors (/proc/PID/fd), threads;
* end-to-end latency p50/p99 over that interval: camera stamp -> fused image received here;
* processed / skipped / dropped by cause over that interval, from the node's /diagnostics
  counters (processed: ``published.*``; skipped: ``drops.pair.superseded_by_newer_pair``, a
  newer pair replaced it while inference was busy; dropped: every other ``drops.*``).

At the end the cameras stop, the node is let go idle (its counters settle with nothing in
progress or pending), and a verdict line says: RSS growth from the row at minute 2 (the second
interval) to the end (goal < 5 %); the latency trend as the Spearman rank correlation of the
per-interval p50 with time, and its least-squares slope in ms per minute (a trend: rho >= 0.7
and the fitted rise over the run > 10 % of the median p50); whether every input is accounted
for (the node's ``unaccounted.*`` all 0, every image it published received here, and what the
cameras sent minus what reached the node, which the node cannot count: with the default
best-effort input QoS that is DDS dropping samples). ``--json`` writes rows and verdict.

Numbers depend on what else the machine runs: the cameras share its cores with the node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_node import ensure_bundle, load_pairs, percentiles, rss_mb, start_node, stop_node  # noqa: E402, I001

from tdfusion_ros.ros import node_params  # noqa: E402

SIZE = (640, 480)
RGB_HZ = 30.0
THERMAL_HZ = 9.0
SKIPPED = "drops.pair.superseded_by_newer_pair"
RSS_GOAL_PCT = 5.0


def proc_stats(pid: int) -> dict[str, Any]:
    """RSS (MB), open file descriptors and threads of a process, from /proc."""
    threads = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return {"rss_mb": rss_mb(pid), "fds": fds, "threads": threads}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 points."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        out = np.empty(len(values))
        sorted_values = np.asarray(values)[order]
        i = 0
        while i < len(values):
            j = i
            while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
                j += 1
            out[order[i:j + 1]] = (i + j) / 2.0
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def trend(minutes: list[float], values: list[float]) -> dict[str, Any]:
    """Spearman rho and least-squares slope (per minute) of ``values`` against time."""
    rho = spearman(minutes, values)
    slope = float(np.polyfit(minutes, values, 1)[0]) if len(values) >= 2 else None
    median = float(np.median(values)) if values else None
    span = (minutes[-1] - minutes[0]) if len(minutes) >= 2 else 0.0
    rising = (rho is not None and slope is not None and median is not None and rho >= 0.7
              and slope * span > 0.1 * median)
    return {"spearman_rho": rho, "slope_ms_per_min": slope, "median_ms": median,
            "trend": bool(rising)}


def counters(inputs: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in inputs.items() if v.lstrip("-").isdigit()}


def fates(now: dict[str, int], before: dict[str, int]) -> dict[str, Any]:
    """Processed / skipped / dropped by cause between two sets of the node's counters."""
    delta = {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(before)}
    return {
        "processed": sum(v for k, v in delta.items() if k.startswith("published.")),
        "skipped": delta.get(SKIPPED, 0),
        "dropped": {k[len("drops."):]: v for k, v in sorted(delta.items())
                    if k.startswith("drops.") and k != SKIPPED and v},
        "pairs_formed": delta.get("pairs.formed", 0),
    }


def soak(bundle: Path, config: Path, duration: float, interval: float, warmup: float,
         domain: int, log: Path, out_rows: list[dict[str, Any]]) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from tdfusion_ros.ros.ros_image import array_to_image, stamp_to_ns

    pairs = load_pairs(SIZE)
    node_proc = start_node(bundle, config, domain, log)
    rclpy.init()
    node = rclpy.create_node("soak_node_driver")
    lock = threading.Lock()
    received: list[tuple[int, int]] = []  # (receive wall ns, stamp ns)
    diag: dict[str, Any] = {"inputs": {}, "count": 0}

    def on_image(msg: Any) -> None:
        now = time.time_ns()
        with lock:
            received.append((now, stamp_to_ns(msg.header.stamp)))

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith(": inputs"):
                with lock:
                    diag["inputs"] = {kv.key: kv.value for kv in status.values}
                    diag["count"] += 1

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, node_params.IMAGE_TOPIC, on_image, qos)
    node.create_subscription(DiagnosticArray, node_params.DIAGNOSTICS_TOPIC, on_diag, qos)
    publishers = {"thermal": node.create_publisher(Image, node_params.THERMAL_TOPIC, 5),
                  "rgb": node.create_publisher(Image, node_params.RGB_TOPIC, 5)}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    stop = threading.Event()
    sent = {"thermal": 0, "rgb": 0}

    def camera(stream: str, rate: float, phase_s: float) -> None:
        """One free-running camera: its own period and phase, stamped at exposure."""
        index = 0 if stream == "thermal" else 1
        period, tick = 1.0 / rate, 0
        start = time.monotonic() + phase_s
        while not stop.is_set():
            delay = start + tick * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image = pairs[tick % len(pairs)][index]
            encoding = "mono16" if stream == "thermal" else "bgr8"
            publishers[stream].publish(array_to_image(image, encoding, time.time_ns(), stream))
            sent[stream] += 1
            tick += 1

    def books() -> tuple[dict[str, int], int]:
        with lock:
            return counters(diag["inputs"]), diag["count"]

    try:
        deadline = time.monotonic() + 120
        while any(p.get_subscription_count() < 1 for p in publishers.values()):
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the node did not subscribe:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        cameras = [threading.Thread(target=camera, args=("rgb", RGB_HZ, 0.0), daemon=True),
                   threading.Thread(target=camera, args=("thermal", THERMAL_HZ, 0.0123),
                                    daemon=True)]
        for thread in cameras:
            thread.start()
        print(f"soak: node pid {node_proc.pid}, warm-up {warmup:g} s, then {duration:g} s "
              f"(a row every {interval:g} s); RGB {RGB_HZ:g} Hz bgr8 + thermal {THERMAL_HZ:g} "
              f"Hz mono16, {SIZE[0]}x{SIZE[1]}", flush=True)
        time.sleep(warmup)
        t0 = time.monotonic()
        before, _ = books()
        with lock:
            first = len(received)
        header = ("| min | RSS MB | fds | threads | p50 ms | p99 ms | processed | skipped | "
                  "dropped by cause |")
        print(header + "\n|" + "---|" * (header.count("|") - 1), flush=True)
        while True:
            elapsed = time.monotonic() - t0
            wait = min(interval, duration - elapsed)
            if wait > 0:
                time.sleep(wait)
            if node_proc.poll() is not None:
                raise SystemExit(f"the node exited ({node_proc.returncode}):\n"
                                 f"{log.read_text()[-2000:]}")
            now, _ = books()
            with lock:
                window = received[first:]
                first = len(received)
            latency = [(r - s) / 1e6 for r, s in window]
            row = {"minute": round((time.monotonic() - t0) / 60.0, 3),
                   **proc_stats(node_proc.pid), "latency_ms": percentiles(latency),
                   **fates(now, before)}
            before = now
            out_rows.append(row)
            print(format_row(row), flush=True)
            if time.monotonic() - t0 >= duration - 1e-3:
                break
        final = proc_stats(node_proc.pid)
        stop.set()
        for thread in cameras:
            thread.join(timeout=5)
        books_end = wait_idle(books, sent, received, lock)
    finally:
        stop.set()
        try:
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=5.0)
            node.destroy_node()
        except Exception as err:  # noqa: BLE001 - measurements are taken; report and go on
            print(f"driver shutdown: {err!r}", file=sys.stderr)
        rclpy.try_shutdown()
        exit_code = stop_node(node_proc)
    with lock:
        delivered = len(received)
    return verdict(out_rows, final, books_end, sent, delivered, exit_code, interval)


def wait_idle(books: Any, sent: dict[str, int], received: list, lock: threading.Lock,
              timeout: float = 120.0) -> dict[str, int]:
    """After the cameras stop: the node's counters unchanged over two /diagnostics with
    nothing in progress or pending (or ``timeout``: then the last ones, marked not idle)."""
    deadline = time.monotonic() + timeout
    previous, seen = None, books()[1]
    while time.monotonic() < deadline:
        now, count = books()
        if count > seen:
            seen = count
            if now.get("in_progress") == 0 and now.get("pairs.pending") == 0 and now == previous:
                return {**now, "idle": 1}
            previous = now
        time.sleep(0.05)
    return {**books()[0], "idle": 0}


def format_row(row: dict[str, Any]) -> str:
    def fmt(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    dropped = ", ".join(f"{k} {v}" for k, v in row["dropped"].items()) or "none"
    lat = row["latency_ms"]
    return (f"| {row['minute']:.1f} | {fmt(row['rss_mb'])} | {row['fds']} | {row['threads']} | "
            f"{fmt(lat['p50'], 0)} | {fmt(lat['p99'], 0)} | {row['processed']} | "
            f"{row['skipped']} | {dropped} |")


def verdict(rows: list[dict[str, Any]], final: dict[str, Any], books: dict[str, int],
            sent: dict[str, int], delivered: int, exit_code: int, interval: float
            ) -> dict[str, Any]:
    """RSS growth from minute 2, latency trend, and whether every input is accounted for."""
    # the row at minute 2 (start-up allocations are done by then); a shorter run: its second
    later = [r for r in rows[:-1] if r["minute"] >= 2.0 - 1e-6]
    base = later[0] if later else rows[min(1, len(rows) - 1)]
    growth = (100.0 * (rows[-1]["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
              if base.get("rss_mb") and rows[-1].get("rss_mb") else None)
    timed = [(r["minute"], r["latency_ms"]["p50"]) for r in rows if r["latency_ms"]["p50"]]
    latency = trend([m for m, _ in timed], [v for _, v in timed])
    unaccounted = {k: v for k, v in books.items() if k.startswith("unaccounted.")}
    published = sum(v for k, v in books.items() if k.startswith("published."))
    lost = {s: sent[s] - books.get(f"{s}.arrived", 0) for s in sent}
    accounted = (bool(books.get("idle")) and bool(unaccounted)
                 and not any(unaccounted.values()) and delivered == published)
    result = {
        "rss_growth_pct_from_minute_2": growth,
        "rss_ok": growth is not None and growth < RSS_GOAL_PCT,
        "rss_base_minute": base["minute"],
        "fds": [min(r["fds"] or 0 for r in rows), max(r["fds"] or 0 for r in rows)],
        "threads": [min(r["threads"] or 0 for r in rows), max(r["threads"] or 0 for r in rows)],
        "latency_p50_trend": latency,
        "accounted": accounted,
        "unaccounted": unaccounted,
        "sent": dict(sent),
        "lost_before_the_node": lost,
        "published": published,
        "received_here": delivered,
        "skipped_total": books.get(SKIPPED, 0),
        "dropped_total": {k[len("drops."):]: v for k, v in sorted(books.items())
                          if k.startswith("drops.") and k != SKIPPED and v},
        "node_idle_at_end": bool(books.get("idle")),
        "node_exit_code": exit_code,
        "final_process": final,
        "interval_s": interval,
    }
    return result


def format_verdict(v: dict[str, Any]) -> str:
    growth = v["rss_growth_pct_from_minute_2"]
    lat = v["latency_p50_trend"]
    rho = "-" if lat["spearman_rho"] is None else f"{lat['spearman_rho']:+.2f}"
    slope = "-" if lat["slope_ms_per_min"] is None else f"{lat['slope_ms_per_min']:+.2f}"
    return (f"verdict: RSS {'-' if growth is None else f'{growth:+.2f}'} % from minute "
            f"{v['rss_base_minute']:.1f} to the end ({'OK' if v['rss_ok'] else 'FAIL'}, goal < "
            f"{RSS_GOAL_PCT:g} %); fds {v['fds'][0]}..{v['fds'][1]}, threads "
            f"{v['threads'][0]}..{v['threads'][1]}; latency p50 trend: Spearman rho {rho}, "
            f"slope {slope} ms/min ({'TREND' if lat['trend'] else 'no trend'}); accounted: "
            f"{'yes' if v['accounted'] else 'NO'} (unaccounted {v['unaccounted']}, published "
            f"{v['published']}, received {v['received_here']}, skipped {v['skipped_total']}, "
            f"dropped {v['dropped_total'] or 'none'}; lost before the node (transport) "
            f"{v['lost_before_the_node']}); node exit {v['node_exit_code']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=node_params.default_config_path())
    parser.add_argument("--duration", type=float, default=600.0,
                        help="measured seconds after the warm-up (default: 10 minutes)")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds per row (default: a minute)")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    work = REPO / "outputs" / "soak_node"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    domain = node_params.private_domain_id(os.getpid() + 23)
    result = soak(bundle, args.config, args.duration, args.interval, args.warmup, domain,
                  work / "node.log", rows)
    print(format_verdict(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(bundle), "config": str(args.config),
                                         "cpus": os.cpu_count(), "rows": rows,
                                         "verdict": result}, indent=1))
    ok = result["rss_ok"] and not result["latency_p50_trend"]["trend"] and result["accounted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
