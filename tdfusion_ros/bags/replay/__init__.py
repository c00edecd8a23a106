"""Replay a rosbag through the fusion pipeline before deploying: ``replay_eval``.

    python -m tdfusion_ros.replay BAG [--thermal-topic T] [--rgb-topic T]
        [--config config/fusion.yaml] [--set sync.slop=0.03 ...] [--bundle DIR]
        [--labels BAG/labels.json] [--map-conf 0.001] [--out DIR] [--png]
        [--live [--speed 0.5]] [--seg-class-map scenes_to_mfnet]
    python -m tdfusion_ros.replay BAG --bundle OLD --bundle NEW [--names old,new]
    python -m tdfusion_ros.replay --compare-runs DIR_A DIR_B
    ros2 run tdfusion_ros replay_eval BAG ...

Offline mode (the default) reads the bag (a rosbag2 folder, an ``.mcap`` or a ``.db3`` file)
as a stream, pairs thermal and RGB images with the node's pairing core and parameters (the
config file the node reads, the same ``node_params`` conversion), runs the node's
``FusionPipeline`` on every pair, and writes into ``--out``:

* ``fused.mp4`` (OpenCV mp4v) and, with ``--png``, ``fused/<frame>.png``;
* ``detections.json``: COCO style (images with their stamps, categories, scored boxes);
* ``masks/<frame>.png``: segmentation class ids (mono8, the node's fused/segmentation);
* ``fused_bag/``: an MCAP bag with ``/fused/image``, ``/fused/detections``
  (vision_msgs/Detection2DArray) and ``/fused/segmentation``, exactly the messages the node
  would publish, for Foxglove or RViz;
* ``frames.csv`` (one row per pair: stamps, stage timings, detections), ``summary.json``,
  ``summary.md`` and ``report.html`` (fusion metrics over time, pairing statistics and drops,
  latency per stage and throughput, sample frames, mAP per class when labels are given, IoU
  per class and mIoU when the labels carry segmentation label maps).

mAP is a ranking metric: it is computed from detections decoded at ``--map-conf`` (default
0.001, as COCO / ultralytics evaluation; NMS IoU and max_det as deployed) from the same
detector output of each labelled frame, while everything published (``fused_bag``,
``detections.json``, counts, sample boxes) keeps the node's threshold. Segmentation classes are
matched to the label classes by name, after ``--seg-class-map`` (if given) has mapped the label
classes onto the segmenter's; mIoU is over the label classes present in the labels or the
predictions.

Two or more ``--bundle`` replay the bag once per bundle (``OUT/<name>/``) and write one
comparison (``OUT/comparison.html``, ``versus.py``): AP and IoU per class side by side with the
difference, throughput and latency, and the frames where the bundles disagree most;
``--compare-runs`` does the same for replay folders written earlier.

Frame ``<frame>`` is ``<pair index:06d>_<RGB stamp ns>``. Everything is deterministic: the
pairs are a function of the stamps alone, every pair is processed in order, and two runs on
the same inputs write identical frames, masks, detections and bag messages.

How it stays fast and bounded. Three threads with bounded queues: a reader (read, decode,
pair), the caller's thread (the pipeline only) and a writer (video, PNGs, bag, JSON, the
metric samples and sample frames). Reading and writing thus overlap inference, and memory
does not grow with the bag: nothing per frame is kept except the detections of labelled
frames (for mAP) and small fixed-size statistics. Fusion metrics (~0.2 s per 640x480 frame)
are computed after the run on at most ``--metrics-frames`` evenly spaced pairs, so they never
slow the replay; the report says which.

Live mode (``--live``) then plays the bag over DDS at its recorded rate (``--speed``),
publishing ``/clock``, into the fusion node started exactly as ``fusion.launch.py`` starts
it (``node_params.launch_spec`` rendered as a command line, with ``use_sim_time``), records
what the node publishes into ``live/fused_bag`` and compares it with the offline run: the pairs
the node skipped under load (its newest-pair policy), and, for pairs both processed, fused
images equal within 1/255 and detections with the same classes and IoU > 0.99.

Exit status: 0 done (a damaged bag is processed up to the damage, with a warning that says
where); 1 a failure while running (e.g. the node did not start); 2 bad arguments or input
(no such bag, empty bag, missing topics, unknown message types, missing storage plugin,
bad config or bundle); 3 the bag was damaged and ``--fail-on-damage`` was given; 4 the live
run disagreed with the offline run.

No torch, ultralytics or transformers on this path (ONNX Runtime / TensorRT engines only).
"""
