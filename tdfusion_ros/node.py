"""The fusion node: ``python -m tdfusion_ros.node`` (``ros2 run tdfusion_ros fusion_node``).

The command itself lives in ``tdfusion_ros.ros.node``; this module keeps ``python -m
tdfusion_ros.node`` working.
"""

import sys

from tdfusion_ros.ros.node import main

if __name__ == "__main__":
    sys.exit(main())
