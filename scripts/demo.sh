#!/usr/bin/env bash
# The README's main job, end to end on a fresh clone (a few minutes on 2 CPU cores):
#   1. set up .venv (scripts/setup_env.sh; reused when it is current),
#   2. write a rosbag of generated road scenes with realistic camera timing (thermal camera at
#      9 Hz with a 15 ms latency and stamp jitter, RGB at 30 Hz, a few dropped frames, labels in
#      labels.json), like a bag recorded on the robot,
#   3. replay it offline through the node's pipeline, and live into the fusion node over DDS
#      (at the recorded rate, /clock, use_sim_time), compare the two,
#   4. write the report and print where it is.
#
# Environment (defaults in brackets; CI uses a reduced size):
#   DEMO_OUT [outputs/demo]   output folder (bag in $DEMO_OUT/bag, replay in $DEMO_OUT/replay)
#   DEMO_SCENES [24]          generated scenes (one pair each; the bag lasts SCENES / 9 s)
#   DEMO_SIZE [320x256]       image size, WxH
#   DEMO_LIVE [1]             0: offline only (no DDS, no node process)
#   DEMO_SPEED [1.0]          live playback rate factor
#   DEMO_BUNDLE [models/default, else exported from models/fusion_default.pt]
#   DEMO_METRICS [24]         pairs on which the fusion metrics are computed (-1: all)
#   DEMO_BICYCLES [1 when the bundle's detector has a "bicycle" class, else 0]
#                             cyclists in the generated scenes (bag_builder --bicycles)
#   DEMO_SEG_MAP [scenes_to_mfnet when the bundle's segmenter has the MFNet classes, else none]
#                             replay_eval --seg-class-map: the scenes' label classes (background,
#                             road, ...) onto the segmenter's (background and road are MFNet's
#                             "unlabeled"), so that the report's mIoU measures what it names
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh

out="${DEMO_OUT:-outputs/demo}"
scenes="${DEMO_SCENES:-24}"
size="${DEMO_SIZE:-320x256}"
live="${DEMO_LIVE:-1}"
speed="${DEMO_SPEED:-1.0}"
metrics="${DEMO_METRICS:-24}"
py="$root/.venv/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export AMENT_PREFIX_PATH="$root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
mkdir -p "$out"
say() { echo "[demo] $*"; }

# The model bundle: the package default, or F's default weights exported to ONNX once.
bundle="${DEMO_BUNDLE:-}"
if [ -z "$bundle" ]; then
  if [ -f models/default/bundle.yaml ]; then
    bundle="models/default"
  else
    bundle="$out/bundle"
    if [ ! -f "$bundle/bundle.yaml" ]; then
      say "no models/default bundle: exporting models/fusion_default.pt to $bundle (once)"
      check=()
      data="${TDFUSION_SHARED_DATA:-$root/../shared/data}"
      if [ -d "$data/det" ]; then
        check=(--data "$data" --check-pairs 00055D --check-crop 128x160)
      else
        check=(--no-check)
      fi
      "$py" training/export.py --fusion models/fusion_default.pt --out "$bundle" "${check[@]}"
    fi
  fi
fi

# The bundle's classes decide what the scenes hold and how their labels are scored.
has_class() {  # has_class GRAPH NAME: the bundle's GRAPH lists class NAME
  "$py" -c 'import sys, yaml
g = yaml.safe_load(open(sys.argv[1] + "/bundle.yaml"))["graphs"].get(sys.argv[2]) or {}
sys.exit(0 if sys.argv[3] in (g.get("class_names") or []) else 1)' "$bundle" "$1" "$2" \
    2>/dev/null
}
bicycles="${DEMO_BICYCLES:-auto}"
if [ "$bicycles" = "auto" ]; then
  bicycles=0
  if has_class detector bicycle; then bicycles=1; fi
fi
scene_args=()
if [ "$bicycles" = "1" ]; then scene_args=(--bicycles); fi

# A bag as a robot would record it.
bag="$out/bag"
say "writing $bag: $scenes generated scenes at $size$([ "$bicycles" = 1 ] && echo ", with cyclists")"
"$py" -m tdfusion_ros.bag_builder --out "$bag" --overwrite --scenes "$scenes" --size "$size" \
  --seed 7 --thermal-rate 9 --rgb-rate 30 --thermal-offset-ms 15 --jitter-ms 2 \
  --drop-prob 0.03 "${scene_args[@]}"

# Offline replay (and the live run into the node, compared with it).
args=("$bag" --bundle "$bundle" --offset-from-bag --out "$out/replay" --overwrite
      --metrics-frames "$metrics")
seg_map="${DEMO_SEG_MAP-auto}"
if [ "$seg_map" = "auto" ]; then
  seg_map=""
  if has_class segmenter unlabeled; then seg_map="scenes_to_mfnet"; fi
fi
if [ -n "$seg_map" ]; then
  say "segmentation scored with the class map $seg_map (scene classes -> the segmenter's)"
  args+=(--seg-class-map "$seg_map")
fi
node_ok=0
if [ "$live" = "1" ]; then
  if "$py" -c "import rclpy, vision_msgs.msg, tdfusion_ros.node" 2>/dev/null; then
    node_ok=1
    args+=(--live --speed "$speed")
  else
    say "the fusion node cannot be imported here: offline replay only"
  fi
fi
say "replaying (offline$([ "$node_ok" = 1 ] && echo ", then live into the node"))"
rc=0
"$py" -m tdfusion_ros.replay "${args[@]}" || rc=$?

report="$out/replay/report.html"
if [ -f "$report" ]; then
  say "report: $(cd "$(dirname "$report")" && pwd)/report.html"
  say "summary: $out/replay/summary.md; fused video: $out/replay/fused.mp4; bag of the node's"
  say "outputs (Foxglove/RViz): $out/replay/fused_bag"
fi
if [ "$rc" != 0 ]; then
  say "replay_eval exited with status $rc (see above)"
fi
exit "$rc"
