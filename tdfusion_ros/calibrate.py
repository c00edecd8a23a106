"""Fit the thermal -> RGB homography and write it into the node's config: ``python -m
tdfusion_ros.calibrate``.

The command itself lives in ``tdfusion_ros.tools.calibrate``; this module keeps ``python -m
tdfusion_ros.calibrate`` working.
"""

import sys

from tdfusion_ros.tools.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
