"""The default-model recipe's task stages on a few real pairs: fuse, train, evaluate, export.

Tiny budgets (one epoch, six pairs): this checks that the stages fit together offline and that
their outputs load where the bundle expects them, not how well the networks learn.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.fused_dataset import FusedDataset, write_fused_dataset

REPO = Path(__file__).resolve().parents[1]
NAMES = ("00111D", "00115D", "00119D", "00004N", "00008N", "00016N")
VAL = ("00119D", "00008N")


@pytest.fixture(scope="module")
def roots(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two small roots in the shared layout (msrs_det and det pairs)."""
    out = []
    for name, src in (("a", shared_data / "msrs_det"), ("b", shared_data / "det")):
        dst = tmp_path_factory.mktemp(name)
        picked = [n for n in NAMES if (src / "ir" / f"{n}.png").is_file()]
        for sub, ext in (("ir", ".png"), ("vi", ".png"), ("labels", ".txt"), ("seg", ".png")):
            (dst / sub).mkdir()
            for n in picked:
                shutil.copy(src / sub / f"{n}{ext}", dst / sub / f"{n}{ext}")
        for f in ("classes.txt", "seg_classes.txt"):
            shutil.copy(src / f, dst / f)
        out.append(str(dst))
    return out


@pytest.fixture(scope="module")
def fused(roots: list[str], tmp_path_factory: pytest.TempPathFactory) -> FusedDataset:
    out = tmp_path_factory.mktemp("fused") / "fixed"
    return write_fused_dataset(out, str(REPO / "models" / "fusion_default.pt"), roots=roots,
                               val_names=VAL, scenes_count=2, scenes_size=(240, 320),
                               threads=1, log=lambda *_: None)


def test_fused_dataset_layout(fused: FusedDataset, roots: list[str]) -> None:
    train, val = fused.images("train"), fused.images("val")
    assert sorted(p.stem for p in val) == sorted(VAL)
    assert len(train) == len(NAMES) - len(VAL) + 2  # + the generated scenes
    import cv2

    image = cv2.imread(str(val[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (480, 640) and image.dtype == np.uint8
    label = (fused.root / "labels" / "val" / "00008N.txt").read_text().split()
    original = (Path(roots[1]) / "labels" / "00008N.txt").read_text().split()
    assert np.allclose([float(v) for v in label], [float(v) for v in original], atol=2e-6)
    assert fused.detection_classes == ["person", "bicycle", "car"]
    assert len(fused.segmentation_classes) == 9 and len(fused.masks("val")) == 2
    data = json.loads(fused.data_yaml.read_text())
    assert data["channels"] == 1 and data["names"] == {"0": "person", "1": "bicycle", "2": "car"}
    # the same request again is not redone
    again = write_fused_dataset(fused.root, str(REPO / "models" / "fusion_default.pt"),
                                roots=roots, val_names=VAL, scenes_count=2,
                                scenes_size=(240, 320), threads=1, log=lambda *_: None)
    assert again.info == fused.info


def test_a_copy_of_the_same_f_reuses_the_fused_set_and_another_f_does_not(
        fused: FusedDataset, roots: list[str], tmp_path: Path) -> None:
    import torch

    copy = tmp_path / "elsewhere.pt"
    shutil.copyfile(REPO / "models" / "fusion_default.pt", copy)
    said: list[str] = []
    common = dict(roots=roots, val_names=VAL, scenes_count=2, scenes_size=(240, 320), threads=1,
                  log=said.append)
    write_fused_dataset(fused.root, str(copy), **common)
    assert any("already written" in s for s in said)
    other = torch.load(copy, weights_only=True)
    first = next(iter(other["state_dict"]))
    other["state_dict"][first] = other["state_dict"][first] + 0.01
    torch.save(other, copy)
    said.clear()
    target = tmp_path / "refused"
    shutil.copytree(fused.root, target)
    redone = write_fused_dataset(target, str(copy), **common)
    assert not any("already written" in s for s in said)
    assert redone.info["request"]["sha256"] != fused.info["request"]["sha256"]


def test_trainers_run_offline_and_export(fused: FusedDataset, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from training.train_detector import evaluate_detector, train_detector
    from training.train_segmenter import evaluate_segmenter, train_segmenter

    attempts = []

    def refuse(*args, **kwargs):  # recorded: ultralytics may swallow the error it raises
        attempts.append(repr(args[:2]))
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    det = train_detector(fused, tmp_path / "det", epochs=1, batch=4, threads=1)
    seg = train_segmenter(fused, tmp_path / "seg", epochs=1, batch=2, threads=1,
                          log=lambda *_: None)
    det_metrics = evaluate_detector(det, fused, threads=1)
    seg_metrics = evaluate_segmenter(seg, fused, threads=1)
    assert set(det_metrics["AP50"]) == {"person", "bicycle", "car"}
    assert 0.0 <= det_metrics["mAP50"] <= 1.0 and det_metrics["images"] == 2
    assert len(seg_metrics["IoU"]) == 9 and 0.0 <= seg_metrics["mIoU"] <= 1.0
    assert not attempts, f"network access attempted: {attempts}"
    monkeypatch.undo()
    # a finished run asked for another deployed size is relabelled, not retrained
    import torch

    trained = torch.load(det, map_location="cpu", weights_only=True)
    assert train_detector(fused, tmp_path / "det", epochs=1, batch=4, threads=1,
                          input_size=(384, 512)) == det
    relabelled = torch.load(det, map_location="cpu", weights_only=True)
    assert relabelled["input_size"] == [384, 512]
    assert relabelled["meta"]["trained_input_size"] == trained["input_size"]
    assert all(torch.equal(relabelled["state_dict"][k], v)
               for k, v in trained["state_dict"].items())
    with pytest.raises(ValueError, match="finished run of 1 epochs, not 3"):
        train_detector(fused, tmp_path / "det", epochs=3, batch=4, threads=1)
    # trained on from a task.pt, the detector starts from its weights (ultralytics' trainer
    # drops them unless told the model is pretrained); no learning rate, so they stay
    tuned = train_detector(fused, tmp_path / "tuned", epochs=1, batch=4, threads=1, init=det,
                           input_size=(384, 512), hyperparameters={
                               "optimizer": "AdamW", "lr0": 1e-12, "warmup_epochs": 0})
    start = relabelled["state_dict"]
    after = torch.load(tuned, map_location="cpu", weights_only=True)["state_dict"]
    convs = [k for k in start if k.endswith(".weight") and start[k].dim() == 4]
    assert len(convs) > 80  # the Lite0 backbone's and the YOLOv8n neck's and head's
    assert all(torch.allclose(after[k], start[k], rtol=1e-3, atol=1e-4) for k in convs)
    with pytest.raises(ValueError, match="finished run of 1 epochs, not 2"):
        train_segmenter(fused, tmp_path / "seg", epochs=2, batch=2, threads=1)
    bundle = tmp_path / "bundle"
    subprocess.run([sys.executable, str(REPO / "training" / "export.py"), "--fusion",
                    str(REPO / "models" / "fusion_default.pt"), "--task", str(det), "--task",
                    str(seg), "--out", str(bundle), "--no-check"], check=True, cwd=REPO,
                   capture_output=True)
    from tdfusion_ros.runtime.bundle import load_bundle

    loaded = load_bundle(bundle)
    assert loaded.graph("detector").input_hw == (384, 512)
    assert loaded.graph("segmenter").class_names == fused.segmentation_classes


def test_recipe_lists_its_stages_and_refuses_unknown_ones() -> None:
    listing = subprocess.run([sys.executable, str(REPO / "training" / "default_model.py"),
                              "--list"], capture_output=True, text=True, cwd=REPO)
    assert listing.returncode == 0
    names = [line.split()[-1] for line in listing.stdout.splitlines()]
    assert names[:4] == ["fused_init", "detector_init", "segmenter_init", "fusion_tdfusion"]
    assert names[-1] == "export" and "segmenter_tdfusion_s0" in names
    bad = subprocess.run([sys.executable, str(REPO / "training" / "default_model.py"),
                          "--stages", "nonsense"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "unknown stage" in bad.stderr


def test_report_shows_the_networks_the_bundle_ships(tmp_path: Path) -> None:
    """The report's "shipped" figures are the final runs' when the recipe trains them longer,
    and arm (d)'s own when it ships those as they are."""
    from training.comparison_report import write_comparison
    from training.default_model import Recipe

    def metrics(folder: str, value: float, kind: str) -> None:
        (tmp_path / "run" / folder).mkdir(parents=True)
        record = ({"mAP50": value, "mAP50-95": value / 2,
                   "AP50": {"person": value, "bicycle": 0.0, "car": value},
                   "AP50-95": {"person": value / 2, "bicycle": 0.0, "car": value / 2}}
                  if kind == "det" else {"mIoU": value, "IoU": {"unlabeled": 0.9, "car": value}})
        (tmp_path / "run" / folder / "metrics.json").write_text(json.dumps(record))

    metrics("detector_tdfusion_s0", 0.10, "det")
    metrics("segmenter_tdfusion_s0", 0.14, "seg")
    metrics("detector_final", 0.42, "det")
    metrics("segmenter_final", 0.27, "seg")
    longer = Recipe(run_dir=str(tmp_path / "run"), final_detector_epochs=100,
                    final_segmenter_epochs=24, final_detector_input_size=[384, 512])
    shipped = write_comparison(longer, tmp_path / "longer")["shipped"]
    assert (shipped["detector"]["run"], shipped["detector"]["epochs"]) == ("detector_final", 100)
    assert shipped["segmenter"]["mIoU"] == 0.27
    text = (tmp_path / "longer" / "results.md").read_text()
    assert "| `detector_final` | 100 | 384 x 512 | 42.0 | 21.0 | 42.0 | 0.0 | 42.0 |" in text
    metrics("detector_finetune", 0.47, "det")
    tuned = Recipe(run_dir=str(tmp_path / "run"), final_detector_epochs=100,
                   final_detector_input_size=[384, 512],
                   finetune_detector={"epochs": 30, "imgsz": 512, "lr0": 3e-4})
    shipped = write_comparison(tuned, tmp_path / "tuned")["shipped"]
    assert shipped["detector"]["run"] == "detector_finetune"
    assert shipped["detector"]["trained_from"]["run"] == "detector_final"
    assert shipped["segmenter"]["run"] == "segmenter_tdfusion_s0"  # no final, no fine-tune
    rows = [line for line in (tmp_path / "tuned" / "results.md").read_text().splitlines()
            if line.startswith("| `detector_")]
    assert [row.split(" | ")[0] for row in rows] == ["| `detector_final`",
                                                     "| `detector_finetune`"]
    # runs/ is not committed: a run gone from disk keeps its figures in the next report
    shutil.rmtree(tmp_path / "run" / "segmenter_tdfusion_s0")
    again = write_comparison(tuned, tmp_path / "tuned")
    assert again["arms"]["tdfusion"]["segmentation"]["0"]["mIoU"] == 0.14
    assert "segmenter" not in again["shipped"]  # what the export ships must be on disk
    metrics("segmenter_tdfusion_s0", 0.14, "seg")
    as_is = write_comparison(Recipe(run_dir=str(tmp_path / "run")), tmp_path / "as_is")
    assert as_is["shipped"]["detector"]["run"] == "detector_tdfusion_s0"
    assert as_is["shipped"]["segmenter"]["epochs"] == 6
    assert as_is["shipped"]["segmenter"]["mIoU"] == 0.14


def test_a_shipped_network_of_other_settings_is_not_taken_as_done(tmp_path: Path) -> None:
    from training.default_model import Recipe, Stages

    recipe = Recipe(run_dir=str(tmp_path), final_detector_epochs=100,
                    final_detector_input_size=[384, 512])
    stages = Stages(recipe)
    (tmp_path / "detector_final").mkdir()
    metrics = tmp_path / "detector_final" / "metrics.json"
    assert not stages.done("detector_final")
    metrics.write_text(json.dumps({"mAP50": 0.04}))  # a run from before epochs were recorded
    assert not stages.done("detector_final")
    metrics.write_text(json.dumps({"mAP50": 0.4, "epochs": 100, "input_size": [240, 320]}))
    assert not stages.done("detector_final")  # to be relabelled at the deployed size
    metrics.write_text(json.dumps({"mAP50": 0.4, "epochs": 100, "input_size": [384, 512]}))
    assert stages.done("detector_final")


def test_a_fine_tune_is_redone_only_for_its_own_settings(tmp_path: Path) -> None:
    from training.default_model import Recipe, Stages, load_recipe

    settings = {"epochs": 30, "imgsz": 512, "lr0": 3e-4}
    assert Stages(Recipe(run_dir=str(tmp_path))).done("detector_finetune")  # none asked
    stages = Stages(Recipe(run_dir=str(tmp_path), finetune_detector=settings))
    assert not stages.done("detector_finetune")
    (tmp_path / "detector_finetune").mkdir()
    metrics = tmp_path / "detector_finetune" / "metrics.json"
    metrics.write_text(json.dumps({"mAP50": 0.5, "finetune": {**settings, "lr0": 1e-3}}))
    assert not stages.done("detector_finetune")
    metrics.write_text(json.dumps({"mAP50": 0.5, "finetune": settings}))
    assert stages.done("detector_finetune")
    assert stages.r.shipped_dir("detector") == tmp_path / "detector_finetune"
    (tmp_path / "detector_finetune" / "finetune.json").write_text(json.dumps({"epochs": 5}))
    with pytest.raises(ValueError, match="fine-tune with other settings"):
        stages._finetune("detector")
    config = tmp_path / "recipe.yaml"
    config.write_text("finetune_segmenter: {epochs: 3, imgsz: 512}\n")
    with pytest.raises(ValueError, match="finetune_segmenter needs epochs and takes only"):
        load_recipe(config)
