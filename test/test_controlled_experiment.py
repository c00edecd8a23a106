"""The controlled experiment: its scenes carry the class where they say, the pre-registered
decision rule decides as written, and the one command runs end to end (tiny settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from experiments.controlled_experiment import HIDE_MORE, SHOW_MORE, pilot_check, verdict
from experiments.headroom_diagnosis import class_readability, loss_optimal_image, object_levels
from experiments.headroom_scenes import (
    INFORMATIVE_IR,
    INFORMATIVE_VIS,
    Amplitudes,
    make_scenes,
    oracle_weights,
)

REPO = Path(__file__).resolve().parents[1]


def test_scenes_are_reproducible_and_labelled() -> None:
    a, b = make_scenes(6, seed=3), make_scenes(6, seed=3)
    np.testing.assert_array_equal(a.ir, b.ir)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.ir.shape == a.vis.shape == a.label.shape == (6, 64, 64)
    assert set(np.unique(a.label)) <= {0, 1, 2, 3, 4} and (a.label > 0).any()
    # ellipses (1, 2) are infrared-informative, rectangles (3, 4) visible-informative
    np.testing.assert_array_equal(a.informative == INFORMATIVE_IR, np.isin(a.label, (1, 2)))
    np.testing.assert_array_equal(a.informative == INFORMATIVE_VIS, np.isin(a.label, (3, 4)))


def test_class_level_is_in_the_informative_modality_only() -> None:
    """Inside minus around each object: the informative source's sign is the class ("up" or
    "down"); the other source's contrast is paint, larger and of either sign."""
    amp = Amplitudes()
    data = make_scenes(40, seed=1, amp=amp)
    agree, paint = [], []
    for (cls, ir), (_, vis) in zip(object_levels(data.ir, data), object_levels(data.vis, data)):
        info, other = (ir, vis) if cls in (1, 2) else (vis, ir)
        agree.append((info > 0) == (cls in (1, 3)))
        paint.append(other)
    assert np.mean(agree) > 0.9
    assert np.mean(np.abs(paint)) > 1.5 * amp.class_level
    assert 0.2 < np.mean(np.asarray(paint) > 0) < 0.8  # random sign


def test_oracle_weights_pick_the_informative_source() -> None:
    inf = np.array([[0, INFORMATIVE_IR, INFORMATIVE_VIS]])
    w = oracle_weights(inf)
    np.testing.assert_array_equal(w[0], [[0.5, 1.0, 0.0]])
    np.testing.assert_array_equal(w[0] + w[1], np.ones((1, 3)))
    inf = np.zeros((1, 9, 9), np.uint8)
    inf[0, 4, 1], inf[0, 4, 7] = INFORMATIVE_IR, INFORMATIVE_VIS
    w = oracle_weights(inf, surround=2)[0, 0]
    assert w[4, 0] == w[2, 3] == 1.0 and w[4, 8] == w[6, 5] == 0.0  # bands of each family
    assert w[4, 4] == 0.5 and w[0, 0] == 0.5  # where the bands meet, and far away


def _records(gains: list[float], contrast: float, rho: float) -> list[dict]:
    runs = []
    for seed, gain in enumerate(gains):
        g = {"contrast": contrast, "spearman_w_ir_vs_ir_minus_vis": rho}
        runs += [{"arm": "A", "seed": seed, "miou": 0.5},
                 {"arm": "B", "seed": seed, "miou": 0.5 + gain / 100, "g": g},
                 {"arm": "C", "seed": seed, "miou": 0.8}]
    return runs


def test_decision_rule_as_preregistered() -> None:
    supported = verdict(_records([5, 6, 4, 7, 5, 6], contrast=0.3, rho=0.05))
    assert supported["decision"] == "supported" and supported["b_wins"] == 6
    # the same gains without the mechanism (G learned a brightness rule) are not "supported"
    assert verdict(_records([5, 6, 4, 7, 5, 6], 0.3, rho=-0.6))["decision"] == "inconclusive"
    refuted = verdict(_records([0.5, -0.4, 0.2, 0.1, -0.3, 0.4], 0.0, 0.0))
    assert refuted["decision"] == "refuted" and refuted["gain_upper_95"] < 3
    assert verdict(_records([8, -4, 9, -3, 7, 1], 0.3, 0.0))["decision"] == "inconclusive"


def test_pilot_validity_and_remedy() -> None:
    def pilot(a: float, c: float) -> dict:
        return {"A": {"miou": a}, "C": {"miou": c}}

    assert pilot_check(pilot(0.40, 0.70)) == (True, None)
    assert pilot_check(pilot(0.40, 0.45)) == (False, SHOW_MORE)  # oracle cannot read the level
    assert pilot_check(pilot(0.70, 0.75)) == (False, HIDE_MORE)  # the average still reveals it


def test_one_command_runs_end_to_end(tmp_path: Path) -> None:
    """``--quick``: the pilot, both calibrations (tiny training cannot be valid) and the report."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "experiments/controlled_experiment.py", "--quick", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    text = (out / "results.md").read_text()
    assert text.startswith("# Controlled experiment")
    assert "## Pre-registration" in text and "## Pilot" in text
    assert text.count("Oracle − fixed") == 3  # pilot + two calibrations, no more
    assert "class level x1.5" in text or "paint range x1.5" in text


def test_readability_and_the_loss_optimal_image() -> None:
    """The informative source alone reads its family's class perfectly and the other's not at
    all; without the gradient term, the loss-optimal image of the oracle with a surround is the
    informative source around each object, so it reads both families."""
    data = make_scenes(24, seed=2)
    ir = class_readability(data.ir, data)
    assert ir["ellipses (class in ir)"] > 0.95 and ir["rectangles (class in vis)"] < 0.8
    best = loss_optimal_image(data, oracle_weights(data.informative, surround=3), alpha=0.0,
                              steps=150)
    assert min(class_readability(best, data).values()) > 0.95
