"""Comparing two fused bags (offline and live): the pairs both processed must agree in image and
detections.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tdfusion_ros.bags.replay.common import (
    FUSED_DETECTIONS_TOPIC,
    FUSED_IMAGE_TOPIC,
    FUSED_SEGMENTATION_TOPIC,
)
from tdfusion_ros.bags.replay.labels import _box_iou
from tdfusion_ros.bags.replay.messages import _decode_detections, _decode_image, fused_typestore


# --------------------------------------------------------------------------- comparison
def _iter_topic(bag: Path, topic: str) -> Iterator[Any]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            return
        for _, _, data in reader.messages(connections=conns):
            yield data


def compare_runs(offline_bag: Path, live_bag: Path, *, thermal16: bool = False,
                 image_tolerance: int = 1, iou_min: float = 0.99) -> dict[str, Any]:
    """Compare the node's outputs with the offline run's, pair by pair (by RGB stamp).

    Both bags hold the pairs in processing order; the live one is a subsequence of the
    offline one (the node skips pairs), so a merge in order reads each bag once.
    """
    from tdfusion_ros.bags.reader import _cdr_header

    store = fused_typestore()
    offline_stamps = [_cdr_header(raw)[0] for raw in _iter_topic(offline_bag, FUSED_IMAGE_TOPIC)]
    position = {stamp: i for i, stamp in enumerate(offline_stamps)}
    live_stamps = [_cdr_header(raw)[0] for raw in _iter_topic(live_bag, FUSED_IMAGE_TOPIC)]
    both_list = [s for s in live_stamps if s in position]
    both = set(both_list)
    ordered = all(position[a] < position[b] for a, b in zip(both_list, both_list[1:]))
    skipped = [s for s in offline_stamps if s not in both]
    result: dict[str, Any] = {
        "offline_pairs": len(offline_stamps), "live_outputs": len(live_stamps),
        "both": len(both), "skipped_by_node": len(skipped),
        "skipped_stamps": skipped[:200],
        "live_only": len(live_stamps) - len(both_list), "mismatches": [],
        "images_equal": 0, "image_max_abs_diff": 0, "detections_compared": 0,
        "detections_equal": 0, "segmentation_compared": 0, "segmentation_equal": 0,
        "in_order": ordered,
        # offline pair indices the node processed (for the report's strip; bounded)
        "node_processed": sorted(position[s] for s in both)[:20000],
    }
    mismatches = result["mismatches"]

    def pairs(topic: str) -> Iterator[tuple[int, Any, Any]]:
        """(stamp, offline raw, live raw) for stamps in both, merging in processing order."""
        live_iter = (raw for raw in _iter_topic(live_bag, topic)
                     if _cdr_header(raw)[0] in both)
        off_iter = iter(_iter_topic(offline_bag, topic))
        for live_raw in live_iter:
            stamp = _cdr_header(live_raw)[0]
            for off_raw in off_iter:
                if _cdr_header(off_raw)[0] == stamp:
                    yield stamp, off_raw, live_raw
                    break
            else:
                return

    for stamp, off_raw, live_raw in pairs(FUSED_IMAGE_TOPIC):
        _, a = _decode_image(store, off_raw)
        _, b = _decode_image(store, live_raw)
        if a.shape != b.shape:
            mismatches.append({"stamp_ns": stamp, "what": f"image size {b.shape} != {a.shape}"})
            continue
        diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0
        result["image_max_abs_diff"] = max(result["image_max_abs_diff"], diff)
        if diff <= image_tolerance:
            result["images_equal"] += 1
        else:
            mismatches.append({"stamp_ns": stamp, "what": f"fused image differs by up to "
                                                          f"{diff}/255"})
    for stamp, off_raw, live_raw in pairs(FUSED_DETECTIONS_TOPIC):
        result["detections_compared"] += 1
        _, a = _decode_detections(store, off_raw)
        _, b = _decode_detections(store, live_raw)
        problem = _compare_boxes(a, b, iou_min)
        if problem is None:
            result["detections_equal"] += 1
        else:
            mismatches.append({"stamp_ns": stamp, "what": problem})
    for stamp, off_raw, live_raw in pairs(FUSED_SEGMENTATION_TOPIC):
        result["segmentation_compared"] += 1
        _, a = _decode_image(store, off_raw)
        _, b = _decode_image(store, live_raw)
        if a.shape == b.shape and np.array_equal(a, b):
            result["segmentation_equal"] += 1
        else:
            share = float((a == b).mean()) if a.shape == b.shape else 0.0
            mismatches.append({"stamp_ns": stamp, "what": f"segmentation differs ({share:.4f} "
                                                          "of pixels equal)"})
    result["agree"] = bool(
        result["both"] > 0 and result["images_equal"] == result["both"]
        and result["detections_equal"] == result["detections_compared"]
        and result["segmentation_equal"] == result["segmentation_compared"])
    if mismatches and thermal16:
        result["note"] = ("16-bit thermal with a smoothed percentile gain: the node's gain "
                          "state follows the pairs it processed, so after a skipped pair its "
                          "8-bit thermal can differ slightly from the offline run's")
    result["mismatches"] = mismatches[:200]
    return result


def _compare_boxes(a: list[tuple], b: list[tuple], iou_min: float) -> str | None:
    if len(a) != len(b):
        return f"{len(b)} detections live, {len(a)} offline"
    unused = list(range(len(b)))
    for box in a:
        best, best_iou = None, -1.0
        for j in unused:
            if b[j][0] != box[0]:
                continue
            iou = _box_iou(box[2:], b[j][2:])
            if iou > best_iou:
                best, best_iou = j, iou
        if best is None or best_iou <= iou_min:
            return (f"no live box of class {box[0]} with IoU > {iou_min} "
                    f"(best {best_iou:.4f})")
        unused.remove(best)
    return None
