"""Procedural street scenes: seeded day/night visible + infrared pairs with segmentation masks and
detection boxes, for tests, bags and the controlled experiment (``python -m tdfusion_ros.scenes``).

Imports numpy and OpenCV only. The generator lives in ``generator.py``; this package's names are
its public API.
"""

from tdfusion_ros.scenes.generator import (
    DETECTION_CLASSES,
    DETECTION_CLASSES_WITH_BICYCLES,
    DETECTION_TO_SEGMENTATION,
    DETECTION_TO_SEGMENTATION_WITH_BICYCLES,
    IR16_BASE,
    IR16_GAIN,
    MIN_SIZE,
    NIGHT_HIDDEN_PROB,
    SEG_BACKGROUND,
    SEG_BICYCLE,
    SEG_CAR,
    SEG_MARKING,
    SEG_PERSON,
    SEG_ROAD,
    SEG_SIGN,
    SEGMENTATION_CLASSES,
    SEGMENTATION_CLASSES_WITH_BICYCLES,
    Scene,
    generate_scene,
    main,
    scene_name,
    scene_seed,
    write_dataset,
    yolo_lines,
)

__all__ = [
    "DETECTION_CLASSES",
    "DETECTION_CLASSES_WITH_BICYCLES",
    "DETECTION_TO_SEGMENTATION",
    "DETECTION_TO_SEGMENTATION_WITH_BICYCLES",
    "IR16_BASE",
    "IR16_GAIN",
    "MIN_SIZE",
    "NIGHT_HIDDEN_PROB",
    "SEG_BACKGROUND",
    "SEG_BICYCLE",
    "SEG_CAR",
    "SEG_MARKING",
    "SEG_PERSON",
    "SEG_ROAD",
    "SEG_SIGN",
    "SEGMENTATION_CLASSES",
    "SEGMENTATION_CLASSES_WITH_BICYCLES",
    "Scene",
    "generate_scene",
    "main",
    "scene_name",
    "scene_seed",
    "write_dataset",
    "yolo_lines",
]
