"""What a deployed robot runs per frame, without ROS and without torch.

``pairing``: thermal/RGB pairs from two streams by stamp. ``thermal_gain``: thermal counts to
display range. ``registration``: thermal -> RGB warp. ``colour``: luma/chroma split and restore.
``image_io``: image files and unit floats. ``bundle``: the exported model folder (``bundle.yaml``
and its graphs). ``engines``: ONNX Runtime / TensorRT (and, for tests, torch) behind one
interface. ``postprocess``: YOLO boxes and segmentation maps from raw outputs. ``pipeline``: one
pair in, fused image + detections + segmentation out.

May import numpy, OpenCV, yaml and the inference runtimes; never torch, ultralytics,
transformers or rclpy (``engines.torch_engine`` imports torch only when it is created), and
nothing above it in tdfusion_ros.
"""
