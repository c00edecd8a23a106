"""The four arms of the default model's comparison (the paper's Table 2 protocol), shared by the
recipe (``training.default_model``) and its report (``training.comparison_report``)."""

ARMS = ("ir", "vis", "fixed", "tdfusion")
ARM_TITLES = {"ir": "(a) infrared only", "vis": "(b) visible only",
              "fixed": "(c) F, fixed loss w = 1/2", "tdfusion": "(d) TDFusion F (learned loss)"}
