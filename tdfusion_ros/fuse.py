"""Fuse an infrared/visible folder pair with a PyTorch checkpoint: ``python -m tdfusion_ros.fuse``
(``ros2 run tdfusion_ros fuse``).

The command itself lives in ``tdfusion_ros.tools.fuse``; this module keeps ``python -m
tdfusion_ros.fuse`` working.
"""

import sys

from tdfusion_ros.tools.fuse import main

if __name__ == "__main__":
    sys.exit(main())
