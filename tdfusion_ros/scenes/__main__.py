"""``python -m tdfusion_ros.scenes --out DIR --count N``: write a generated scene dataset."""

import sys

from tdfusion_ros.scenes.generator import main

if __name__ == "__main__":
    sys.exit(main())
