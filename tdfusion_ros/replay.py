"""Replay a rosbag through the fusion pipeline: ``python -m tdfusion_ros.replay`` (``ros2 run
tdfusion_ros replay_eval``).

The command itself lives in ``tdfusion_ros.bags.replay.cli``; this module keeps ``python -m
tdfusion_ros.replay`` working.
"""

import sys

from tdfusion_ros.bags.replay.cli import main

if __name__ == "__main__":
    sys.exit(main())
