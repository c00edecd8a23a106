"""The two TDFusion networks and their checkpoint files (PyTorch).

``networks.py``: F, the fusion network (``FusionNet``), and G, the loss-generation network
(``LossGenerationNet``) that the meta step trains to produce F's loss weights.
``checkpoints.py``: reading, checking and writing their ``.pt`` files (ours and the official ones).

May import torch and numpy, and nothing else of tdfusion_ros. Nothing in ``runtime`` or ``ros``
imports this package; training, ``tools.fuse`` and the torch engine do.
"""
