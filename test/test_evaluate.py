"""training/evaluate.py: the evaluation command on small crops of real MSRS pairs.

The main run is a separate process, as a user runs it; the task-metric plumbing is checked in
process with stand-in task networks whose answers are known (perfect and blind), since real
task networks only become meaningful once train.py has trained them.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion_ros.metrics.fusion import fusion_metrics
from tdfusion_ros.metrics.segmentation import segmentation_metrics
from tdfusion_ros.nets.checkpoints import load_network, save_network
from tdfusion_ros.nets.networks import LossGenerationNet
from tdfusion_ros.runtime.colour import prepare_pair, to_uint8
from tdfusion_ros.runtime.image_io import read_image, to_unit_float
from tdfusion_ros.tools.fuse import TorchFuser, fuse_images
from test.conftest import REPO
from training import evaluate

# (name, left, top) of 80x64 crops that hold people in the MSRS detection labels.
CROPS = (("00003N", 230, 230), ("00004N", 200, 240), ("00055D", 520, 200))
CROP_W, CROP_H = 80, 64
METRICS = ["EN", "SF", "SCD", "VIF", "Qabf", "SSIM"]
BASELINES = ["Infrared only", "Visible only", "Average", "Maximum"]


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "training/evaluate.py", "--device", "cpu", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def crop_labels(text: str, left: int, top: int) -> str:
    """YOLO rows of a 640x480 image, clipped to the crop and normalised to it."""
    rows = []
    for line in text.splitlines():
        c, cx, cy, w, h = (float(v) for v in line.split())
        x1 = max((cx - w / 2) * 640 - left, 0.0)
        x2 = min((cx + w / 2) * 640 - left, CROP_W)
        y1 = max((cy - h / 2) * 480 - top, 0.0)
        y2 = min((cy + h / 2) * 480 - top, CROP_H)
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            rows.append(f"{int(c)} {(x1 + x2) / 2 / CROP_W:.6f} {(y1 + y2) / 2 / CROP_H:.6f} "
                        f"{(x2 - x1) / CROP_W:.6f} {(y2 - y1) / CROP_H:.6f}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def tiny_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real MSRS pairs cropped to 80x64, with their labels cropped the same way."""
    root = tmp_path_factory.mktemp("tiny")
    for sub in ("ir", "vi", "labels"):
        (root / sub).mkdir()
    det = shared_data / "det"
    (root / "labels" / "classes.txt").write_text((det / "classes.txt").read_text())
    for name, left, top in CROPS:
        for sub in ("ir", "vi"):
            image = cv2.imread(str(det / sub / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / sub / f"{name}.png"),
                        image[top:top + CROP_H, left:left + CROP_W])
        labels = crop_labels((det / "labels" / f"{name}.txt").read_text(), left, top)
        (root / "labels" / f"{name}.txt").write_text(labels)
    return root


@pytest.fixture(scope="module")
def random_g(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("g") / "g_random.pt"
    return save_network(LossGenerationNet(), path, "loss_generation")


@pytest.fixture(scope="module")
def main_run(tiny_data: Path, official_ivif: Path, random_g: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official checkpoint, a G-fused ablation V row, and Fig. 5 maps of the random G."""
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run_evaluate("--checkpoint", str(official_ivif), "--checkpoint", str(random_g),
                          "--ablation", "V", "--weights-maps", str(random_g),
                          "--data", str(tiny_data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| Method | EN | SF | SCD | VIF | Qabf | SSIM |" in result.stdout
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sources(tiny_data: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ir, vis) as read, and their float Y planes, as the evaluation prepares them."""
    ir, vis = read_image(tiny_data / "ir" / f"{name}.png"), read_image(tiny_data / "vi" /
                                                                       f"{name}.png")
    pair = prepare_pair(to_unit_float(ir), to_unit_float(vis))
    return ir, vis, pair.ir_y, pair.vis_y


def test_metrics_csv_has_a_row_per_image_and_method(main_run: Path) -> None:
    rows = read_rows(main_run / "metrics.csv")
    assert list(rows[0]) == ["method", "image", "width", "height", *METRICS, "fuse_s"]
    methods = [*BASELINES, "ReFusion_IVIF", "V"]
    assert len(rows) == len(methods) * len(CROPS)
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        assert sorted(r["image"] for r in own) == sorted(c[0] for c in CROPS)
        assert all((r["width"], r["height"]) == ("80", "64") for r in own)
        for column in METRICS:
            values = [float(r[column]) for r in own]
            if column == "SCD" and method in ("Infrared only", "Visible only"):
                assert all(math.isnan(v) for v in values)  # corr with a zero image: undefined
            else:
                assert all(math.isfinite(v) for v in values), (method, column)


def test_average_baseline_equals_fusion_metrics_computed_directly(main_run, tiny_data) -> None:
    rows = read_rows(main_run / "metrics.csv")
    for name, _, _ in CROPS:
        _, _, ir_y, vis_y = sources(tiny_data, name)
        average = to_uint8((ir_y + vis_y) / 2)
        saved = cv2.imread(str(main_run / "Average" / "grey" / f"{name}.png"),
                           cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(saved, average)
        expected = fusion_metrics(average, to_uint8(ir_y), to_uint8(vis_y))
        row = next(r for r in rows if r["method"] == "Average" and r["image"] == name)
        for column in METRICS:
            assert float(row[column]) == pytest.approx(expected[column], rel=1e-12, abs=1e-12)


def test_table_md_is_the_mean_per_method_with_the_best_in_bold(main_run: Path) -> None:
    rows = read_rows(main_run / "metrics.csv")
    text = (main_run / "table.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Method | EN | SF | SCD | VIF | Qabf | SSIM |"
    table = {cells[0]: cells[1:] for cells in
             ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert list(table) == [*BASELINES, "ReFusion_IVIF", "V"]
    means = {m: [float(np.nanmean([float(r[c]) for r in rows if r["method"] == m]))
                 if any(math.isfinite(float(r[c])) for r in rows if r["method"] == m)
                 else math.nan for c in METRICS] for m in table}
    for j, column in enumerate(METRICS):
        best = max(round(v[j], 2) for v in means.values() if math.isfinite(v[j]))
        for method, cells in table.items():
            value = means[method][j]
            if not math.isfinite(value):
                assert cells[j] == "n/a"
                continue
            assert cells[j].strip("*") == f"{value:.2f}", (method, column)
            assert cells[j].startswith("**") == (round(value, 2) == best), (method, column)
    assert "V: fused image = w_ir * I_ir + w_vis * I_vis" in text
    assert "n/a: undefined for every image" in text


def test_fused_images_match_the_fuse_command(main_run, tiny_data, official_ivif) -> None:
    fuser = TorchFuser(official_ivif, "cpu")
    for name, _, _ in CROPS:
        ir, vis, _, _ = sources(tiny_data, name)
        fused = fuse_images(fuser, ir, vis)
        grey = cv2.imread(str(main_run / "ReFusion_IVIF" / "grey" / f"{name}.png"),
                          cv2.IMREAD_UNCHANGED)
        colour = cv2.imread(str(main_run / "ReFusion_IVIF" / "colour" / f"{name}.png"),
                            cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(grey, fused.grey)
        np.testing.assert_array_equal(colour, fused.colour)
        for folder in ("Infrared_only", "Visible_only", "Average", "Maximum", "V"):
            assert cv2.imread(str(main_run / folder / "colour" / f"{name}.png")).shape == \
                (CROP_H, CROP_W, 3)
            assert cv2.imread(str(main_run / folder / "grey" / f"{name}.png"),
                              cv2.IMREAD_UNCHANGED).shape == (CROP_H, CROP_W)


@torch.inference_mode()
def g_weights(random_g: Path, ir_y: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
    net = load_network(random_g, "loss_generation")
    return net(torch.from_numpy(ir_y)[None, None], torch.from_numpy(vis_y)[None, None])[0].numpy()


def test_ablation_v_fuses_with_g_weights(main_run, tiny_data, random_g) -> None:
    name = CROPS[0][0]
    _, _, ir_y, vis_y = sources(tiny_data, name)
    w = g_weights(random_g, ir_y, vis_y)
    saved = cv2.imread(str(main_run / "V" / "grey" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    expected = to_uint8(w[0] * ir_y + w[1] * vis_y)
    assert np.abs(saved.astype(int) - expected).max() <= 1


def test_weights_maps_png_layout(main_run, tiny_data, random_g) -> None:
    name = CROPS[1][0]
    figure = cv2.imread(str(main_run / "weights_maps" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    step = CROP_W + evaluate.MAP_GAP
    width = 5 * step + evaluate.MAP_BAR + evaluate.MAP_BAR_LABELS
    assert figure.shape == (evaluate.MAP_HEADER + CROP_H, width, 3)
    _, _, ir_y, vis_y = sources(tiny_data, name)
    w = g_weights(random_g, ir_y, vis_y)
    fused = cv2.imread(str(main_run / "ReFusion_IVIF" / "grey" / f"{name}.png"),
                       cv2.IMREAD_UNCHANGED)
    expected = [cv2.cvtColor(to_uint8(p), cv2.COLOR_GRAY2BGR) for p in (ir_y, vis_y)]
    expected += [evaluate.colour_weights(w[0]), evaluate.colour_weights(w[1])]
    expected.append(cv2.cvtColor(fused, cv2.COLOR_GRAY2BGR))
    for index, panel in enumerate(expected):
        shown = figure[evaluate.MAP_HEADER:, index * step:index * step + CROP_W]
        assert np.abs(shown.astype(int) - panel).mean() < 0.5, evaluate.MAP_PANELS[index]
    bar = figure[evaluate.MAP_HEADER:, 5 * step:5 * step + evaluate.MAP_BAR]
    np.testing.assert_array_equal(bar[0, 0], evaluate.colour_weights(np.ones((1, 1)))[0, 0])
    np.testing.assert_array_equal(bar[-1, 0], evaluate.colour_weights(np.zeros((1, 1)))[0, 0])
    summary = read_rows(main_run / "weights_maps" / "summary.csv")
    row = next(r for r in summary if r["image"] == name)
    assert float(row["mean_w_ir"]) == pytest.approx(float(w[0].mean()), abs=1e-5)


def test_unpaired_names_are_refused_with_a_clear_message(tiny_data, official_ivif,
                                                         tmp_path) -> None:
    unpaired = tmp_path / "unpaired"
    for sub in ("ir", "vi"):
        (unpaired / sub).mkdir(parents=True)
        for name, _, _ in CROPS:
            (unpaired / sub / f"{name}.png").write_bytes(
                (tiny_data / sub / f"{name}.png").read_bytes())
    (unpaired / "ir" / "extra.png").write_bytes((tiny_data / "ir" / "00003N.png").read_bytes())
    result = run_evaluate("--checkpoint", str(official_ivif), "--data", str(unpaired),
                          "--out", str(tmp_path / "o2"))
    assert result.returncode == 2
    assert "without a partner" in result.stderr and "extra" in result.stderr
    assert not (tmp_path / "o2" / "metrics.csv").exists()


def test_layout_and_option_errors(tiny_data, official_ivif, tmp_path, capsys) -> None:
    assert evaluate.main(["--checkpoint", str(official_ivif), "--data",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such data folder" in err and "nowhere" in err
    (tmp_path / "ir").mkdir()
    assert evaluate.main(["--checkpoint", str(official_ivif), "--data", str(tmp_path),
                          "--out", str(tmp_path / "o")]) == 2
    assert "missing vi/" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(official_ivif), "--ablation", "VI", "--data",
                          str(tiny_data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown ablation 'VI'" in err and "II (no gradient term in L_f)" in err
    with pytest.raises(SystemExit):
        evaluate.main(["--name", "x", "--checkpoint", str(official_ivif), "--data",
                       str(tiny_data), "--out", str(tmp_path / "o")])
    assert "must follow the --checkpoint" in capsys.readouterr().err


def test_one_command_per_ablation_row_appends(tiny_data, official_ivif, tmp_path) -> None:
    out = tmp_path / "table3"
    common = ["--data", str(tiny_data), "--out", str(out), "--no-baselines", "--limit", "1"]
    assert evaluate.main(["--checkpoint", str(official_ivif), "--ablation", "i", *common]) == 0
    assert evaluate.main(["--checkpoint", str(official_ivif), "--ablation", "full", "--append",
                          *common]) == 0
    # a checkpoint of ours that records its ablation is labelled by it
    tagged = save_network(load_network(official_ivif, "fusion"), tmp_path / "row3.pt", "fusion",
                          meta={"ablation": "III"})
    assert evaluate.main(["--checkpoint", str(tagged), "--append", *common]) == 0
    rows = read_rows(out / "metrics.csv")
    assert [r["method"] for r in rows] == ["I", "Ours", "III"]
    # the same weights under three labels: identical numbers, so every row is bold
    assert rows[0]["EN"] == rows[1]["EN"] == rows[2]["EN"]
    table = (out / "table.md").read_text()
    assert "| I | **" in table and "| Ours | **" in table and "| III | **" in table
    assert "I: fixed loss weights w = 1/2 (no G)" in table
    assert "III: F also trained by L_t" in table and "n/a" not in table


class StandIn:
    """A task network with a preset answer: the next predict() returns ``answer``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.ignore_index = 255
        self.answer: object = None

    def to(self, device: object) -> StandIn:
        return self

    def predict(self, fused: torch.Tensor) -> object:
        assert fused.shape == (1, 1, CROP_H, CROP_W)
        return self.answer


def test_task_metrics_of_perfect_and_blind_predictions(tiny_data, tmp_path, monkeypatch):
    masks = tmp_path / "masks"
    masks.mkdir()
    truth = {}
    for name, _, _ in CROPS:
        mask = np.zeros((CROP_H, CROP_W), np.uint8)
        mask[10:40, 20:60] = 1
        mask[:2] = 255  # ignored
        cv2.imwrite(str(masks / f"{name}.png"), mask)
        truth[name] = mask
    dataset = evaluate.open_dataset(tiny_data)
    dataset = evaluate.Dataset(dataset.root, dataset.pairs, dataset.labels, masks,
                               dataset.class_names)
    stand_ins = {"detection": StandIn(3), "segmentation": StandIn(2)}
    monkeypatch.setattr(evaluate, "load_task_network",
                        lambda path, kind, names, size: (kind, stand_ins[kind]))
    tasks = evaluate.TaskEvaluator(["detection=d.pt", "segmentation=s.pt"], dataset,
                                   torch.device("cpu"))
    assert tasks.class_names == ["person", "bicycle", "car"]
    blind_masks = []
    fused = np.zeros((CROP_H, CROP_W), np.float32)
    for name, _, _ in CROPS:
        gt = evaluate.yolo_boxes(tiny_data / "labels" / f"{name}.txt", CROP_W, CROP_H)
        assert len(gt) > 0
        stand_ins["detection"].answer = [torch.from_numpy(np.c_[gt, np.ones(len(gt))])]
        stand_ins["segmentation"].answer = torch.from_numpy(truth[name])[None].long()
        tasks.add("perfect", name, fused)
        stand_ins["detection"].answer = [torch.zeros((0, 6))]
        blind = np.zeros((CROP_H, CROP_W), np.int64)
        blind[30:, :] = 1
        blind_masks.append(blind)
        stand_ins["segmentation"].answer = torch.from_numpy(blind)[None]
        tasks.add("blind", name, fused)
    results = tasks.results()
    assert results["perfect"]["mAP50"] == pytest.approx(1.0)
    assert results["perfect"]["mAP50-95"] == pytest.approx(1.0)
    assert results["perfect"]["mIoU"] == pytest.approx(1.0)
    assert results["blind"]["mAP50"] == 0.0
    expected = segmentation_metrics(np.stack(blind_masks), np.stack(list(truth.values())), 2)
    assert results["blind"]["mIoU"] == pytest.approx(expected["mIoU"])
    assert results["blind"]["mAcc"] == pytest.approx(expected["mAcc"])
    assert tasks.columns == ["mAP50", "mAP50-95", "mIoU", "mAcc"]


def test_yolo_boxes_to_pixels(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("2 0.5 0.25 0.5 0.5\n\n0 0.1 0.9 0.2 0.2\n")
    np.testing.assert_allclose(evaluate.yolo_boxes(path, 80, 64),
                               [[2, 20, 0, 60, 32], [0, 0, 51.2, 16, 64]])
    path.write_text("2 0.5 0.25\n")
    with pytest.raises(evaluate.TaskSetupError, match="a.txt:1: expected 'class cx cy w h'"):
        evaluate.yolo_boxes(path, 80, 64)


def test_missing_task_code_or_checkpoint_is_a_clear_error(tiny_data, official_ivif, tmp_path,
                                                          monkeypatch, capsys) -> None:
    args = ["--checkpoint", str(official_ivif), "--data", str(tiny_data), "--out",
            str(tmp_path / "o"), "--task-checkpoint", f"detection={tmp_path / 'none.pt'}"]
    assert evaluate.main(args) == 2
    assert "task checkpoint:" in capsys.readouterr().err
    import training

    monkeypatch.delattr(training, "task_networks", raising=False)
    monkeypatch.setitem(sys.modules, "training.task_networks", None)  # import fails
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "task metrics need training/task_networks.py" in err
    assert not (tmp_path / "o" / "metrics.csv").exists()
