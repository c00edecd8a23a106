"""Evaluation metrics, numpy only (optional libraries imported inside the functions that use them).

``fusion``: EN, SF, SCD, VIF, Qabf, SSIM as the TDFusion evaluator defines them.
``segmentation``: confusion matrix, IoU per class, mIoU. ``detection``: COCO-style mAP.

Imports nothing else of tdfusion_ros.
"""
