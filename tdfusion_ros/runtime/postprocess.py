"""Pre- and post-processing around the exported task networks, in numpy and OpenCV only.

The runtime node runs the detector and segmenter through ONNX Runtime or TensorRT and must not
import torch, so what ultralytics and transformers do around their networks is redone here:

* Detector input: ultralytics' letterbox (keep the aspect ratio, resize with
  ``cv2.INTER_LINEAR``, pad centred with grey 114 of 255). Boxes are mapped back the way
  ``ultralytics.utils.ops.scale_boxes`` does: subtract the pad, divide by the per-axis resize
  factor, clip to the source image.
* Detector output: the raw YOLOv8 head output (1, 4 + nc, anchors): rows 0-3 are box centre x, y,
  width, height in detector-input pixels, rows 4.. are per-class scores that already went
  through a sigmoid inside the network. Decoding follows ``ultralytics.utils.nms
  .non_max_suppression`` with its defaults (best class per box, score strictly above the
  threshold, class-wise greedy NMS through a per-class coordinate offset, IoU strictly above the
  threshold suppresses, at most ``max_det`` boxes). Equal scores keep anchor order (a stable
  sort), as torchvision's NMS does; ultralytics uses that one whenever torchvision is loaded.
* Segmenter: the graph returns logits at a quarter of its input size; like transformers'
  ``post_process_semantic_segmentation`` they are resized bilinearly (half-pixel centres, i.e.
  ``align_corners=False``) to the wanted size before the argmax, so class borders are smooth
  instead of blocky.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "PAD_GREY",
    "Detections",
    "Letterbox",
    "decode_yolo",
    "detector_input",
    "letterbox",
    "segmentation_class_map",
    "segmenter_input",
]

PAD_GREY = 114  # ultralytics' letterbox padding, in 8-bit units
MAX_WH = 7680  # ultralytics' per-class box offset; larger than any input side we export
MAX_NMS = 30000  # ultralytics keeps at most this many candidates (best first) before NMS


@dataclass(frozen=True)
class Letterbox:
    """Where a source image sits inside the detector input, to map boxes back."""

    source_hw: tuple[int, int]
    input_hw: tuple[int, int]
    scale_x: float  # resized width / source width
    scale_y: float  # resized height / source height
    pad_x: int  # columns of padding on the left
    pad_y: int  # rows of padding at the top

    def to_source(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes in detector-input pixels -> source pixels, clipped to the source image."""
        out = np.asarray(xyxy, dtype=np.float32).copy()
        out[:, [0, 2]] -= np.float32(self.pad_x)
        out[:, [1, 3]] -= np.float32(self.pad_y)
        out[:, [0, 2]] /= np.float32(self.scale_x)
        out[:, [1, 3]] /= np.float32(self.scale_y)
        h, w = self.source_hw
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out


def letterbox(
    image: np.ndarray, input_hw: tuple[int, int], pad_value: float | None = None,
    center: bool = True,
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``input_hw``, as ultralytics' LetterBox.

    ``pad_value`` defaults to grey 114 of 255 in the image's own units (114 for 8-bit images,
    114/255 for float images in [0, 1]). ``center=False`` puts the image top-left and all the
    padding bottom/right (ultralytics' ``center=False``; how ``training.task_networks`` pads).
    """
    if image.ndim not in (2, 3) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {image.shape}")
    h0, w0 = image.shape[:2]
    h_in, w_in = int(input_hw[0]), int(input_hw[1])
    r = min(h_in / h0, w_in / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (w_in - new_w) / 2, (h_in - new_h) / 2
    # An odd pad puts the extra row below / column right, as ultralytics rounds it.
    top, left = (round(dh - 0.1), round(dw - 0.1)) if center else (0, 0)
    if (h0, w0) != (new_h, new_w):
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        image = resized.reshape((new_h, new_w) + image.shape[2:])  # cv2 drops a single channel
    if pad_value is None:
        integer = np.issubdtype(image.dtype, np.integer)
        pad_value = PAD_GREY if integer else PAD_GREY / 255.0
    shape = (h_in, w_in) + image.shape[2:]
    out = np.full(shape, pad_value, dtype=image.dtype)
    out[top : top + new_h, left : left + new_w] = image
    box = Letterbox((h0, w0), (h_in, w_in), new_w / w0, new_h / h0, left, top)
    return out, box


def _as_nchw(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) float image -> contiguous float32 (1, C, H, W)."""
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def _unit_float(image: np.ndarray) -> np.ndarray:
    """Refuse 8/16-bit images: the networks were trained on [0, 1], 0..255 would saturate them."""
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"expected a float image in [0, 1], got {image.dtype}; "
            "convert with tdfusion_ros.runtime.image_io.to_unit_float"
        )
    return image.astype(np.float32, copy=False)


def detector_input(
    image: np.ndarray, input_hw: tuple[int, int], center: bool = True
) -> tuple[np.ndarray, Letterbox]:
    """The detector's (1, 1, H, W) float32 input from a fused Y image in [0, 1]."""
    boxed, box = letterbox(_unit_float(image), input_hw, center=center)
    return _as_nchw(boxed), box


def segmenter_input(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The segmenter's (1, 1, H, W) float32 input: a plain bilinear resize, no padding.

    The class map is resized back to the source size afterwards, so nothing needs undoing.
    """
    image = _unit_float(image)
    if image.shape[:2] != tuple(input_hw):
        image = cv2.resize(image, (int(input_hw[1]), int(input_hw[0])),
                           interpolation=cv2.INTER_LINEAR)
    return _as_nchw(image)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best score first."""

    xyxy: np.ndarray  # (N, 4) float32, pixels
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def as_rows(self) -> np.ndarray:
        """(N, 6) rows (class, x1, y1, x2, y2, score), the layout detection_metrics reads."""
        return np.concatenate(
            [self.class_ids[:, None].astype(np.float64), self.xyxy.astype(np.float64),
             self.scores[:, None].astype(np.float64)], axis=1)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                max_keep: int) -> np.ndarray:
    """Indices kept by greedy NMS (torchvision's rule: IoU strictly above the threshold drops).

    Stops once ``max_keep`` boxes are kept: greedy NMS keeps in score order, so the first
    ``max_keep`` are the same as keeping all and truncating.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(
    raw: np.ndarray,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    box: Letterbox | None = None,
) -> Detections:
    """Detections from one raw YOLOv8 output (1, 4 + nc, anchors) or (4 + nc, anchors).

    Boxes are in source pixels when ``box`` (from :func:`letterbox`) is given, else in
    detector-input pixels. Defaults are ultralytics' predictor defaults.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim == 3:
        if raw.shape[0] != 1:
            raise ValueError(f"decode_yolo takes one image, got a batch of {raw.shape[0]}")
        raw = raw[0]
    if raw.ndim != 2 or raw.shape[0] < 5:
        raise ValueError(f"expected a raw YOLOv8 output (1, 4 + nc, anchors), got {raw.shape}")
    if not (0.0 <= conf_threshold <= 1.0 and 0.0 <= iou_threshold <= 1.0):
        raise ValueError(
            f"thresholds must lie in [0, 1]: conf {conf_threshold}, iou {iou_threshold}"
        )
    class_scores = raw[4:]
    cls = class_scores.argmax(axis=0)  # first maximum on ties, like torch.max
    conf = class_scores.max(axis=0)
    candidates = np.flatnonzero(conf > conf_threshold)
    if candidates.size > MAX_NMS:
        candidates = candidates[np.argsort(-conf[candidates], kind="stable")[:MAX_NMS]]
    conf, cls = conf[candidates], cls[candidates]
    cxcywh = raw[:4, candidates].T
    half = cxcywh[:, 2:] / 2
    xyxy = np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)
    offset = cls.astype(np.float32)[:, None] * np.float32(MAX_WH)
    keep = _greedy_nms(xyxy + offset, conf, iou_threshold, max_det)
    xyxy, conf, cls = xyxy[keep], conf[keep], cls[keep]
    if box is not None:
        xyxy = box.to_source(xyxy)
    return Detections(xyxy.astype(np.float32).reshape(-1, 4), conf.astype(np.float32),
                      cls.astype(np.int32))


def segmentation_class_map(logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """uint8 class ids at ``out_hw`` from logits (1, C, h, w) or (C, h, w).

    Bilinear resize of the logits (half-pixel centres, as torch's ``align_corners=False``),
    then argmax; ties go to the lower class id, as in torch. The argmax is a running maximum
    over the class planes, each resized into the same buffer: one full-size float plane per
    class instead of an (H, W, C) stack and a numpy argmax over its short last axis (at
    640x480 with 9 classes about 2 ms instead of 11).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 4:
        if logits.shape[0] != 1:
            raise ValueError(f"segmentation_class_map takes one image, got {logits.shape[0]}")
        logits = logits[0]
    if logits.ndim != 3:
        raise ValueError(f"expected logits (1, C, h, w) or (C, h, w), got {logits.shape}")
    num_classes = logits.shape[0]
    if num_classes > 256:
        raise ValueError(f"{num_classes} classes do not fit a uint8 class map")
    h, w = int(out_hw[0]), int(out_hw[1])
    resize = logits.shape[1:] != (h, w)

    def plane(index: int, out: np.ndarray | None = None) -> np.ndarray:
        if not resize:
            return np.ascontiguousarray(logits[index])
        return cv2.resize(logits[index], (w, h), dst=out, interpolation=cv2.INTER_LINEAR)

    best = plane(0).copy()
    class_map = np.zeros((h, w), np.uint8)
    if num_classes == 1:
        return class_map
    scratch = np.empty((h, w), np.float32)
    zeros = np.zeros((h, w), np.uint8)
    higher = np.empty((h, w), np.uint8)
    for index in range(1, num_classes):
        scores = plane(index, scratch)
        cv2.compare(scores, best, cv2.CMP_GT, dst=higher)  # strictly: ties keep the lower id
        cv2.max(scores, best, dst=best)
        cv2.add(zeros, index, dst=class_map, mask=higher)
    return class_map
