"""The ROS 2 shell around the runtime: the lifecycle node and what it needs to talk ROS.

``node``: ``FusionNode`` (subscribe, pair, run the pipeline, publish) and its process entry.
``node_params``: every parameter, its validation, config files and the launch spec (no rclpy, so
the launch file, replay and tests share it). ``ros_image``: sensor_msgs/vision_msgs <-> numpy.

May import ``runtime`` and ``paths``; only ``node`` imports rclpy. Nothing here imports torch.
"""
