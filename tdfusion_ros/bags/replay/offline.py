"""The offline run: reader thread (read, decode, pair) -> pipeline (caller's thread) -> writer
thread (video, PNGs, bag, JSON, samples).
"""

from __future__ import annotations

import json
import math
import queue
import resource
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tdfusion_ros.bags.reader import (
    BagReadError,
)
from tdfusion_ros.bags.replay.common import (
    _END,
    _RESET,
    CSV_STAGES,
    DETECTIONS_TYPE,
    FUSED_DETECTIONS_TOPIC,
    FUSED_IMAGE_TOPIC,
    FUSED_SEGMENTATION_TOPIC,
    IMAGE_TYPE,
    OutputWriteError,
    ReplayError,
    ReplayOptions,
    ReplayRunError,
    _frame_name,
    _put,
    _Stages,
    _Timeline,
    disk_nearly_full,
    imwrite,
    why_not_written,
    writing,
)
from tdfusion_ros.bags.replay.inputs import _Setup
from tdfusion_ros.bags.replay.labels import _labels_to_fused, _SegEval
from tdfusion_ros.bags.replay.messages import _Messages
from tdfusion_ros.runtime.pairing import Pair, Pairer, Stream
from tdfusion_ros.runtime.pipeline import (
    SIZE_MISMATCH,
    FrameResult,
    PipelineInputError,
    overlay,
    palette,
)
from tdfusion_ros.runtime.postprocess import decode_yolo
from tdfusion_ros.runtime.registration import Registration
from tdfusion_ros.runtime.thermal_gain import ThermalGain


class _Offline:
    """One offline replay: reader thread -> pipeline (this thread) -> writer thread."""

    def __init__(self, opts: ReplayOptions, setup: _Setup) -> None:
        self.opts = opts
        self.s = setup
        self.out = opts.out
        self.stages = _Stages()
        self.timeline = _Timeline()
        self.in_q: queue.Queue = queue.Queue(maxsize=max(1, opts.queue_depth))
        self.out_q: queue.Queue = queue.Queue(maxsize=max(1, opts.queue_depth))
        self.stop = threading.Event()
        self.reader_error: BaseException | None = None
        self.writer_error: BaseException | None = None
        self.pairer: Pairer[Any] = Pairer(setup.pairing)
        self.pair_errors: dict[str, int] = {}
        self.pairs_queued = 0
        self.processed = 0
        self.process_s = 0.0
        self.fused_size: tuple[int, int] | None = None
        # writer state
        self.det_per_class: dict[str, int] = {}
        self.total_dets = 0
        self.gt: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []
        self.labelled_seen = 0
        self.unmapped: dict[str, int] = {}
        self.eval_preds = 0  # detections scored for mAP (at --map-conf)
        self.seg = _SegEval.create(setup, opts.predictions_from_labels)
        self.samples: list[dict[str, Any]] = []
        self.metric_files: list[tuple[int, int, Path]] = []
        self.video_frames = 0
        self.bag_messages = 0
        self.ir16 = False
        self.reader_cpu_s = 0.0
        self.writer_cpu_s = 0.0
        self.process_cpu_s = 0.0

    # ------------------------------------------------------------------ reader thread
    def _read(self) -> None:
        thermal_topic = self.s.thermal_topic
        limit = self.opts.max_pairs
        try:
            last = time.perf_counter()
            for msg in self.s.reader.messages():
                now = time.perf_counter()
                self.stages.add("read_decode", (now - last) * 1000.0)
                if self.stop.is_set():
                    break
                stream = Stream.THERMAL if msg.topic == thermal_topic else Stream.RGB
                result = self.pairer.push(stream, msg.stamp_ns, msg)
                if result.reset and not _put(self.in_q, _RESET, self._consumer_alive):
                    return
                self.stages.add("pairing", (time.perf_counter() - now) * 1000.0)
                if not self._forward():
                    return
                if limit is not None and self.pairs_queued >= limit:
                    break
                last = time.perf_counter()
            else:
                self.pairer.flush()
                self._forward()
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            self.reader_error = err
        finally:
            self.reader_cpu_s = time.thread_time()
            _put(self.in_q, _END, self._consumer_alive)

    def _forward(self) -> bool:
        limit = self.opts.max_pairs
        while True:
            if limit is not None and self.pairs_queued >= limit:
                return True
            pair = self.pairer.take()
            if pair is None:
                return True
            if not _put(self.in_q, pair, self._consumer_alive):
                return False
            self.pairs_queued += 1

    def _consumer_alive(self) -> bool:
        return not self.stop.is_set()

    # ------------------------------------------------------------------ pipeline (caller)
    def run(self) -> float:
        """Process every pair; returns the wall time from the first read to the last write."""
        reader = threading.Thread(target=self._read, name="replay_reader", daemon=True)
        writer = threading.Thread(target=self._write_loop, name="replay_writer", daemon=True)
        started = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage.ru_utime + usage.ru_stime
        writer.start()
        reader.start()
        pipeline = self.s.pipeline
        writer_alive = writer.is_alive
        try:
            while True:
                wait = time.perf_counter()
                try:
                    item = self.in_q.get(timeout=0.5)
                except queue.Empty:
                    if not reader.is_alive() and self.in_q.empty():
                        break  # the reader gave up without its end marker
                    continue
                if item is _END:
                    break
                if item is _RESET:
                    pipeline.reset()
                    _put(self.out_q, _RESET, writer_alive)
                    continue
                pair: Pair[Any] = item
                begin = time.perf_counter()
                self.stages.add("queue_wait", (begin - wait) * 1000.0)
                try:
                    result = pipeline.process(pair.thermal.payload.image, pair.rgb.payload.image)
                except PipelineInputError as err:
                    self.pair_errors[err.reason] = self.pair_errors.get(err.reason, 0) + 1
                    if not _put(self.out_q, ("error", pair, err.reason), writer_alive):
                        break
                    continue
                except Exception as err:  # an engine failure: stop, keep what was written
                    raise ReplayRunError(
                        f"the pipeline failed on pair {pair.index} (RGB stamp "
                        f"{pair.rgb.stamp_ns} ns): {type(err).__name__}: {err}") from err
                elapsed = time.perf_counter() - begin
                self.process_s += elapsed
                self.stages.add("process_wall", elapsed * 1000.0)
                for stage, value in result.timings_ms.items():
                    self.stages.add(stage, value)
                self.timeline.add(self.processed, result.timings_ms.get("total", 0.0),
                                  self.processed)
                raw_det = None  # decoded again at --map-conf by the writer, for mAP
                labels = self.s.labels
                if (result.detections is not None and labels is not None
                        and pair.rgb.stamp_ns in labels.boxes):
                    raw_det = pipeline.last_detector_output
                if self.writer_error is not None or not _put(
                        self.out_q, ("frame", self.processed, pair, result, raw_det),
                        writer_alive):
                    break
                self.processed += 1
        except KeyboardInterrupt:
            self.s.warnings.append("interrupted (Ctrl-C): the outputs hold the pairs processed "
                                   "so far")
        finally:
            self.stop.set()
            _put(self.out_q, _END, writer_alive)
            writer.join()
            reader.join(timeout=30)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.process_cpu_s = usage.ru_utime + usage.ru_stime - cpu0
        if isinstance(self.writer_error, OutputWriteError):
            raise self.writer_error
        if self.writer_error is not None:
            raise ReplayRunError(f"writing outputs failed: {self.writer_error}") \
                from self.writer_error
        if self.reader_error is not None:
            err = self.reader_error
            if isinstance(err, BagReadError):
                raise ReplayError(str(err)) from err
            raise ReplayRunError(f"reading the bag failed: {type(err).__name__}: {err}") from err
        return time.perf_counter() - started

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        try:
            with writing(self.out):  # a folder it cannot create or write to
                self._open_outputs()
            while True:
                item = self.out_q.get()
                if item is _END:
                    break
                begin = time.perf_counter()
                if item is _RESET:
                    self.gain.reset()
                elif item[0] == "error":
                    _, pair, reason = item
                    if reason == SIZE_MISMATCH:  # the pipeline's gain ran before that check
                        self._thermal8(pair.thermal.payload.image)
                else:
                    _, index, pair, result, raw_det = item
                    self._write_frame(index, pair, result, raw_det)
                    self.stages.add("write", (time.perf_counter() - begin) * 1000.0)
        except BaseException as err:  # noqa: BLE001 - reported by run()
            self.writer_error = err
            self.stop.set()
            while True:  # unblock the pipeline thread
                try:
                    if self.out_q.get(timeout=0.5) is _END:
                        break
                except queue.Empty:
                    if not threading.main_thread().is_alive():
                        break
        finally:
            try:
                self._close_outputs()
            except BaseException as err:  # noqa: BLE001
                if self.writer_error is None:
                    self.writer_error = err
            self.writer_cpu_s = time.thread_time()

    def _open_outputs(self) -> None:
        opts, out = self.opts, self.out
        pipe = self.s.pipeline
        self.gain = ThermalGain(pipe.settings.gain)  # mirrors the pipeline's, for the metrics
        self.registration = Registration(pipe.settings.registration)
        self.encoding = self.s.values["output.encoding"]
        self.messages = _Messages(pipe.class_names, self.encoding)
        self.video = None
        if opts.png:
            (out / "fused").mkdir(parents=True, exist_ok=True)
        if opts.masks and pipe.segmentation_enabled:
            (out / "masks").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        self.tmp = out / ".replay_tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.coco_images = _NamedFile(self.tmp / "images.jsonl")
        self.coco_anns = _NamedFile(self.tmp / "annotations.jsonl")
        self.ann_id = 0
        self.csv = _NamedFile(out / "frames.csv")
        self.csv.write("frame,pair_index,rgb_stamp_ns,thermal_stamp_ns,stamp_diff_ms,"
                       "rgb_receive_ns,mode,detections," + ",".join(f"{s}_ms" for s in
                                                                 CSV_STAGES) + "\n")
        self.bag_writer = None
        if opts.output_bag:
            from rosbags.rosbag2 import StoragePlugin, Writer

            self.bag_writer = _NamedBagWriter(out / "fused_bag", Writer(
                out / "fused_bag", version=9, storage_plugin=StoragePlugin.MCAP))
            self.bag_writer.open()
            store = self.messages.store
            self.conn_image = self.bag_writer.add_connection(FUSED_IMAGE_TOPIC, IMAGE_TYPE,
                                                             typestore=store)
            self.conn_det = (self.bag_writer.add_connection(FUSED_DETECTIONS_TOPIC,
                                                            DETECTIONS_TYPE, typestore=store)
                             if pipe.detection_enabled else None)
            self.conn_seg = (self.bag_writer.add_connection(FUSED_SEGMENTATION_TOPIC,
                                                            IMAGE_TYPE, typestore=store)
                             if pipe.segmentation_enabled else None)
        self.last_log_ns = -1
        est = max(self.s.est_pairs, 1)
        if opts.max_pairs is not None:
            est = min(est, opts.max_pairs)
        n_metric = est if opts.metrics_frames < 0 else min(opts.metrics_frames, est)
        self.metric_every = 0 if n_metric <= 0 else max(1, math.ceil(est / n_metric))
        n_samples = min(max(opts.samples, 0), est)
        self.sample_targets = sorted({round(i * (est - 1) / max(n_samples - 1, 1))
                                      for i in range(n_samples)}) if n_samples else []
        self.last_frame: tuple | None = None
        self.label_classes = list(self.s.labels.classes) if self.s.labels is not None else []
        self.class_to_label = {name: i for i, name in enumerate(self.label_classes)}

    def _thermal8(self, thermal: np.ndarray) -> np.ndarray | None:
        try:
            return self.gain(thermal)
        except ValueError:
            return None

    def _write_frame(self, index: int, pair: Pair[Any], result: FrameResult,
                     raw_det: tuple[np.ndarray, Any] | None = None) -> None:
        thermal_msg, rgb_msg = pair.thermal.payload, pair.rgb.payload
        stamp, frame_id = rgb_msg.stamp_ns, rgb_msg.frame_id
        name = _frame_name(index, stamp)
        fused = result.fused
        height, width = fused.shape[:2]
        self.fused_size = (width, height)
        t8 = self._thermal8(thermal_msg.image)
        if thermal_msg.image.dtype == np.uint16:
            self.ir16 = True

        # video and PNGs
        if self.opts.video:
            if self.video is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self.video = cv2.VideoWriter(str(self.out / "fused.mp4"), fourcc, self.s.fps,
                                             (width, height))
                self.video_size = (width, height)
                if not self.video.isOpened():
                    self.s.warnings.append("OpenCV could not open an mp4v video writer: no "
                                           "fused.mp4 (use --png)")
                    self.opts.video = False
            if self.opts.video:
                frame = fused if (width, height) == self.video_size else cv2.resize(
                    fused, self.video_size)
                self.video.write(frame)  # silent when it fails: checked once closed
                self.video_frames += 1
        if self.opts.png:
            imwrite(self.out / "fused" / f"{name}.png", fused)
        class_map = result.class_map
        if class_map is not None and self.opts.masks:
            imwrite(self.out / "masks" / f"{name}.png", class_map.astype(np.uint8))

        # the node's messages
        if self.bag_writer is not None:
            log_ns = max(int(rgb_msg.receive_ns), self.last_log_ns + 1)
            self.last_log_ns = log_ns
            self.bag_writer.write(self.conn_image, log_ns,
                                  self.messages.image(fused, self.encoding, stamp, frame_id))
            self.bag_messages += 1
            if self.conn_det is not None and result.detections is not None:
                self.bag_writer.write(self.conn_det, log_ns,
                                      self.messages.detections(result.detections, stamp,
                                                               frame_id))
                self.bag_messages += 1
            if self.conn_seg is not None and class_map is not None:
                self.bag_writer.write(self.conn_seg, log_ns,
                                      self.messages.image(class_map.astype(np.uint8), "mono8",
                                                          stamp, frame_id))
                self.bag_messages += 1

        # COCO JSON and the per-frame table
        det = result.detections
        n_det = 0 if det is None else len(det)
        self.coco_images.write(json.dumps({
            "id": index + 1, "file_name": name, "width": width, "height": height,
            "stamp_ns": stamp, "thermal_stamp_ns": thermal_msg.stamp_ns,
            "frame_id": frame_id}) + "\n")
        names = self.s.pipeline.class_names
        if det is not None:
            for (x1, y1, x2, y2), score, cls in zip(det.xyxy.tolist(), det.scores.tolist(),
                                                     det.class_ids.tolist()):
                self.ann_id += 1
                w, h = x2 - x1, y2 - y1
                self.coco_anns.write(json.dumps({
                    "id": self.ann_id, "image_id": index + 1, "category_id": int(cls) + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                    "area": round(w * h, 3), "score": round(float(score), 5),
                    "iscrowd": 0}) + "\n")
                label = names[cls] if cls < len(names) else str(cls)
                self.det_per_class[label] = self.det_per_class.get(label, 0) + 1
            self.total_dets += n_det
        timings = result.timings_ms
        self.csv.write(",".join([
            name, str(pair.index), str(stamp), str(thermal_msg.stamp_ns),
            f"{pair.diff_ns / 1e6:.3f}", str(rgb_msg.receive_ns), result.mode, str(n_det),
            *(f"{timings[s]:.3f}" if s in timings else "" for s in CSV_STAGES)]) + "\n")

        # ground truth and predictions for mAP
        gt_fused = None
        labels = self.s.labels
        if labels is not None and stamp in labels.boxes:
            self.labelled_seen += 1
            rgb_size = (rgb_msg.image.shape[1], rgb_msg.image.shape[0])
            plan = self.registration.plan((thermal_msg.image.shape[1],
                                           thermal_msg.image.shape[0]), rgb_size)
            gt_fused = _labels_to_fused(labels.boxes[stamp], labels.image_size, rgb_size, plan)
            if self.seg is not None and stamp in labels.segmentation:
                self.seg.add(labels.segmentation[stamp], result.class_map, rgb_size, plan)
            if self.opts.predictions_from_labels:
                preds = np.concatenate([gt_fused, np.ones((len(gt_fused), 1))], axis=1)
            else:
                rows = []
                scored = det
                if raw_det is not None:  # the same detector output at the evaluation threshold
                    t = self.s.pipeline.thresholds
                    scored = decode_yolo(raw_det[0], self.opts.map_conf, t.iou, t.max_det,
                                         raw_det[1])
                if scored is not None:
                    for row in scored.as_rows():
                        cls = int(row[0])
                        label = names[cls] if cls < len(names) else str(cls)
                        mapped = self.class_to_label.get(label)
                        if mapped is None:
                            self.unmapped[label] = self.unmapped.get(label, 0) + 1
                            continue
                        rows.append([mapped, *row[1:]])
                preds = np.array(rows, np.float64).reshape(-1, 6)
            self.eval_preds += len(preds)
            self.gt.append(gt_fused)
            self.preds.append(preds)

        # metric samples (metrics are computed after the run) and sample frames
        luma = None
        if self.metric_every and index % self.metric_every == 0 and t8 is not None:
            luma = self._network_inputs(t8, rgb_msg.image)
            if luma is not None:
                path = self.tmp / f"m_{index:06d}.npy"
                fused_y = np.clip(np.rint(result.fused_y * 255.0), 0, 255).astype(np.uint8)
                with writing(path):
                    np.save(path, np.stack([fused_y, *luma]))
                self.metric_files.append((index, stamp, path))
        if index in self.sample_targets:
            self._sample(index, pair, result, t8, gt_fused)
            self.last_frame = None
        else:
            self.last_frame = (index, pair, result, t8, gt_fused)

    def _network_inputs(self, t8: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The registered 8-bit thermal and the visible Y, as the fusion network saw them."""
        from tdfusion_ros.runtime.colour import prepare_pair
        from tdfusion_ros.runtime.image_io import to_unit_float

        try:
            t_reg, rgb_reg = self.registration.apply(t8, rgb)
        except ValueError:
            return None
        luma = prepare_pair(to_unit_float(t_reg), to_unit_float(rgb_reg))
        return tuple(np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
                     for y in (luma.ir_y, luma.vis_y))

    def _sample(self, index: int, pair: Pair[Any], result: FrameResult,
                t8: np.ndarray | None, gt: np.ndarray | None) -> None:
        fused = result.fused
        height, width = fused.shape[:2]
        scale = 320.0 / width if width < 320 else min(1.0, 360.0 / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        panels = []
        inputs = self._network_inputs(t8, pair.rgb.payload.image) if t8 is not None else None
        if inputs is not None:
            panels.append(_label_panel(cv2.cvtColor(inputs[0], cv2.COLOR_GRAY2BGR), size,
                                       "thermal"))
            try:
                _, rgb_reg = self.registration.apply(t8, pair.rgb.payload.image)
                panels.append(_label_panel(rgb_reg, size, "RGB"))
            except ValueError:
                pass
        boxed = fused.copy()
        if gt is not None:
            for row in gt:
                _dashed_rect(boxed, row[1:5], (255, 255, 255))
        det = result.detections
        names = self.s.pipeline.class_names
        if det is not None:
            colours = palette()
            for (x1, y1, x2, y2), score, cls in zip(det.xyxy.tolist(), det.scores.tolist(),
                                                     det.class_ids.tolist()):
                colour = tuple(int(c) for c in colours[(cls % 255) + 1])
                cv2.rectangle(boxed, (round(x1), round(y1)), (round(x2), round(y2)), colour, 2)
                text = f"{names[cls] if cls < len(names) else cls} {score:.2f}"
                cv2.putText(boxed, text, (round(x1), max(10, round(y1) - 3)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        title = "fused" + (" + detections" if det is not None else "") + (
            " (labels dashed)" if gt is not None else "")
        panels.append(_label_panel(boxed, size, title))
        if result.class_map is not None:
            panels.append(_label_panel(overlay(fused, result.class_map), size, "segmentation"))
        strip = np.concatenate(panels, axis=1)
        file = f"sample_{index:06d}.jpg"
        imwrite(self.out / "samples" / file, strip, [cv2.IMWRITE_JPEG_QUALITY, 85])
        self.samples.append({"index": index, "stamp_ns": pair.rgb.payload.stamp_ns,
                             "file": f"samples/{file}", "detections": 0 if det is None
                             else len(det)})

    def _close_outputs(self) -> None:
        if getattr(self, "last_frame", None) is not None and len(self.samples) < len(
                self.sample_targets):
            self._sample(*self.last_frame)
        self.last_frame = None
        if getattr(self, "video", None) is not None:
            self.video.release()
            self._check_video()
        if getattr(self, "bag_writer", None) is not None:
            self.bag_writer.close()
        for handle in ("csv", "coco_images", "coco_anns"):
            if hasattr(self, handle):
                getattr(self, handle).close()
        if hasattr(self, "coco_images"):
            self._write_coco()

    def _check_video(self) -> None:
        """OpenCV's video writer fails silently (a full disk): a fused.mp4 that does not hold
        every frame is an error, not a short video."""
        path = self.out / "fused.mp4"
        if not self.video_frames:
            return
        capture = cv2.VideoCapture(str(path))
        readable = capture.isOpened()
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if readable else 0
        capture.release()
        if readable and frames == self.video_frames:
            return
        if not readable and path.is_file() and path.stat().st_size > 0 \
                and not disk_nearly_full(path):
            return  # an OpenCV that writes mp4v but cannot read it back: nothing to check
        raise OutputWriteError(path, f"{frames} of {self.video_frames} frames reached the "
                               f"file ({why_not_written(path)})")

    def _write_coco(self) -> None:
        """detections.json assembled from the streamed parts (constant memory), whole or not
        at all (written beside it, then renamed)."""
        final = self.out / "detections.json"
        with writing(final):
            self._write_coco_to(final.with_name(final.name + ".tmp"))
            final.with_name(final.name + ".tmp").replace(final)

    def _write_coco_to(self, path: Path) -> None:
        names = self.s.pipeline.class_names
        with path.open("w") as out:
            out.write('{"info": ' + json.dumps({
                "description": "tdfusion_ros replay_eval detections (COCO style; bbox x, y, w,"
                               " h in fused-image pixels; category_id = class index + 1)",
                "bag": str(self.opts.bag), "bundle": str(self.s.bundle)}))
            out.write(',\n"categories": ' + json.dumps(
                [{"id": i + 1, "name": n} for i, n in enumerate(names)]))
            for key, part in (("images", "images.jsonl"), ("annotations", "annotations.jsonl")):
                out.write(f',\n"{key}": [')
                first = True
                with (self.tmp / part).open() as lines:
                    for line in lines:
                        out.write(("\n" if first else ",\n") + line.rstrip("\n"))
                        first = False
                out.write("]")
            out.write("}\n")


class _NamedFile:
    """A text file whose write errors name it (a full disk is found by whichever write fills
    it, and Python's OSError from ``write`` names no file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with writing(path):
            self.handle = path.open("w")

    def write(self, text: str) -> None:
        with writing(self.path):
            self.handle.write(text)

    def close(self) -> None:
        with writing(self.path):
            self.handle.close()


class _NamedBagWriter:
    """rosbags' Writer, its errors naming the bag folder."""

    def __init__(self, path: Path, writer: Any) -> None:
        self.path, self.writer = path, writer

    def open(self) -> None:
        with writing(self.path):
            self.writer.open()

    def add_connection(self, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_connection(*args, **kwargs)

    def write(self, *args: Any) -> None:
        with writing(self.path):
            self.writer.write(*args)

    def close(self) -> None:
        with writing(self.path):
            self.writer.close()


def _label_panel(image: np.ndarray, size: tuple[int, int], text: str) -> np.ndarray:
    panel = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if panel.ndim == 2:
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2BGR)
    cv2.putText(panel, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(panel, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def _dashed_rect(image: np.ndarray, box: Sequence[float], colour: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    dash = 5
    for xa in range(x1, x2, 2 * dash):
        xb = min(xa + dash, x2)
        cv2.line(image, (xa, y1), (xb, y1), colour, 1)
        cv2.line(image, (xa, y2), (xb, y2), colour, 1)
    for ya in range(y1, y2, 2 * dash):
        yb = min(ya + dash, y2)
        cv2.line(image, (x1, ya), (x1, yb), colour, 1)
        cv2.line(image, (x2, ya), (x2, yb), colour, 1)
