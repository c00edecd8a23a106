"""Bag tools: make a rosbag, read one, and replay one through the node's pipeline.

``builder``: rosbags from image pairs or generated scenes, with labels. ``reader``: image
messages from rosbag2 folders, ``.mcap`` and ``.db3`` files, damaged ones included.
``replay``: the offline/live replay and its report (``python -m tdfusion_ros.replay``).

May import ``runtime``, ``metrics``, ``scenes``, ``ros.node_params`` and ``ros.ros_image``; never
torch. Only the live replay imports rclpy, inside the functions that use it.
"""
