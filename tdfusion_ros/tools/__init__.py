"""The bodies of the offline command-line tools that are not bag tools.

``fuse``: fuse an infrared/visible folder pair with a PyTorch checkpoint (imports torch and
``nets``). ``calibrate``: fit the thermal -> RGB homography and write it into the node's config
(imports ``runtime`` only). Their commands are ``python -m tdfusion_ros.fuse`` and
``python -m tdfusion_ros.calibrate``.
"""
