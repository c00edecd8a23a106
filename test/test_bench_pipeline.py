"""benchmarks/bench_pipeline.py runs a whole frame stage by stage and reports every stage.

No time is asserted (speed lives in the benchmark's output); this checks that the benchmark
still follows the pipeline (it compares its first frame with ``FusionPipeline.process``) and
prints each stage of a bundle with detector and segmenter, with the naive F beside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .test_pipeline import write_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "gain", "registration", "luma", "fusion", "fusion (naive)", "colour",
          "detector_pre", "detector", "detector_post", "segmenter_pre", "segmenter",
          "segmenter_post", "messages", "total (frame)")


def test_every_stage_is_reported(shared_data: Path, tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--bundle", str(bundle),
         "--size", "128x96", "--pairs", "2", "--rounds", "1", "--threads", "1", "--sessions",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "TDFUSION_SHARED_DATA": str(shared_data)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row["stage"]: row for row in json.loads(out.read_text())["stages"]}
    assert set(STAGES) <= set(rows)
    assert all(row["n"] == 2 and row["p99_ms"] >= row["median_ms"] >= 0 for row in rows.values())
    assert "fusion / fusion (naive):" in proc.stdout
    assert "fusion, dynamic-size session" in rows  # --sessions: the pipeline's is fixed-size
    # The tiny bundle's fusion graph is not models/fusion_default.pt: said, not hidden.
    assert "is not the checkpoint" in proc.stdout
