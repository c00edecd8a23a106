"""Build a rosbag from image pairs or generated scenes: ``python -m tdfusion_ros.bag_builder``
(``ros2 run tdfusion_ros bag_builder``).

The command itself lives in ``tdfusion_ros.bags.builder``; this module keeps ``python -m
tdfusion_ros.bag_builder`` working.
"""

import sys

from tdfusion_ros.bags.builder import main

if __name__ == "__main__":
    sys.exit(main())
