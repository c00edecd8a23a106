"""The arms, tasks and budget rule of the task-driven comparison, shared by its recipe
(``training.task_driven``) and its report (``training.task_driven_report``)."""

from __future__ import annotations

#: arm -> (title, source): "ir"/"vis", an Algorithm 1 run of this recipe, or "official"
ARMS: dict[str, tuple[str, str]] = {
    "ir": ("(a) infrared only", "ir"),
    "vis": ("(b) visible Y only", "vis"),
    "fixed_detection": ("(c) F, fixed loss (detection pairs' F/T steps)", "alg1"),
    "fixed_segmentation": ("(c) F, fixed loss (segmentation pairs' F/T steps)", "alg1"),
    "tdfusion_detection": ("(d) TDFusion F, G against the detection loss", "alg1"),
    "tdfusion_segmentation": ("(e) TDFusion F, G against the segmentation loss", "alg1"),
    "official": ("(f) official ReFusion F", "official"),
}
#: Algorithm 1 runs: arm -> (task, ablation)
ALGORITHM1 = {"fixed_detection": ("detection", "I"), "fixed_segmentation": ("segmentation", "I"),
              "tdfusion_detection": ("detection", "none"),
              "tdfusion_segmentation": ("segmentation", "none")}
#: per task: the TDFusion arm, the matching fixed-loss arm
TASK_ARMS = {"detection": ("tdfusion_detection", "fixed_detection"),
             "segmentation": ("tdfusion_segmentation", "fixed_segmentation")}
METRIC = {"detection": "mAP50", "segmentation": "mIoU"}
NETWORK = {"detection": "detector", "segmentation": "segmenter"}


def last_quarter_gain(curve: dict[int, float], epochs: int) -> float:
    """Validation gain from the last evaluation at or before 3/4 of ``epochs`` to ``epochs``
    (inf when the curve does not reach ``epochs``)."""
    if epochs not in curve:
        return float("inf")
    before = [e for e in curve if e <= 0.75 * epochs]
    return curve[epochs] - curve[max(before)] if before else float("inf")
