#!/usr/bin/env bash
# Rehearse the Jetson path on arm64 without a Jetson.
#
# On an x86_64 (or aarch64) Debian/Ubuntu host, as root:
#   1. build (or reuse) an arm64 Debian root filesystem with debootstrap; on x86 its binaries run
#      through qemu-user-static and binfmt_misc;
#   2. on the host: build the project's wheel and a TensorRT bundle with the real CLI
#      (`qsched-export bundle --target tensorrt`), and, for comparison, check that bundle's ONNX
#      Runtime build on the host CPU;
#   3. in the rootfs: a venv with the wheel and its `runtime` extra from the package index
#      (aarch64 wheels only, no torch), then the device-side commands of the README's Jetson
#      section with ONNX Runtime in place of TensorRT:
#        qsched-export build --from BUNDLE --target onnxruntime --bits N --no-check
#        qsched-export check --artifact BUILT          (parity: PASSED, or FAILED with numbers)
#        qsched-export run   --artifact BUILT --prompt "..." --out image.png
#
# TensorRT itself is not rehearsed: it needs an NVIDIA GPU and JetPack's libraries.
# Timings printed under emulation are NOT benchmarks: qemu runs aarch64 code many times slower
# than an Orin's cores, and the host CPU is shared.
#
# Usage: tools/arm64_rehearsal.sh [options] [ROOTFS]
#   ROOTFS            arm64 root filesystem folder (default: build/arm64-rootfs in the repository,
#                     git-ignored); reused when a previous run finished it
#   --bundle DIR      use this bundle (made on x86 with `qsched-export bundle`) instead of making one
#   --bits N          scheme to bundle and build: 8 (w8a8, default), 4 (w4a16), 16, 32
#   --python NAME     interpreter inside the rootfs (default python3; bookworm's is 3.11)
#   --qemu-cpu MODEL  CPU model qemu emulates (default cortex-a76: ARMv8.2-A with dot product and
#                     no SVE or i8mm, the closest of qemu 7.2's models to Orin's Cortex-A78AE;
#                     `max` enables every feature qemu has); ignored on an aarch64 host
#   --host-runtime-python PY  also install the wheel with the runtime extra in a venv of this host
#                     interpreter (e.g. python3.10) and build, check and run there
#   --work DIR        host folder for the wheel, the bundle, the log and the results
#                     (default: build/arm64-rehearsal)
#   --suite NAME      Debian suite of the rootfs (default bookworm)
#   --mirror URL      Debian mirror (default http://deb.debian.org/debian)
# Environment: HOST_PYTHON (default python3) runs the x86 side; it needs the project's `export`
# extra to make a bundle, and only the `runtime` extra with --bundle.
set -euo pipefail

die() { echo "arm64_rehearsal: error: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOTFS=""
BUNDLE=""
BITS=8
CHROOT_PYTHON=python3
QEMU_CPU_MODEL=cortex-a76
HOST_RUNTIME_PYTHON=""
WORK=""
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
HOST_PYTHON=${HOST_PYTHON:-python3}
PROMPT="two small red circles on a blue background"

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) [ $# -ge 2 ] || die "--bundle needs a folder"; BUNDLE=$(realpath -m -- "$2"); shift 2 ;;
    --bits) [ $# -ge 2 ] || die "--bits needs 4, 8, 16 or 32"; BITS=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter name, e.g. python3"; CHROOT_PYTHON=$2; shift 2 ;;
    --qemu-cpu) [ $# -ge 2 ] || die "--qemu-cpu needs a model (qemu-aarch64-static -cpu help)"; QEMU_CPU_MODEL=$2; shift 2 ;;
    --host-runtime-python) [ $# -ge 2 ] || die "--host-runtime-python needs an interpreter, e.g. python3.10"; HOST_RUNTIME_PYTHON=$2; shift 2 ;;
    --work) [ $# -ge 2 ] || die "--work needs a folder"; WORK=$(realpath -m -- "$2"); shift 2 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs a Debian suite, e.g. bookworm"; SUITE=$2; shift 2 ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$ROOTFS" ] || die "one ROOTFS folder only, got $ROOTFS and $1"; ROOTFS=$(realpath -m -- "$1"); shift ;;
  esac
done
ROOTFS=${ROOTFS:-$REPO/build/arm64-rootfs}
WORK=${WORK:-$REPO/build/arm64-rehearsal}
case "$BITS" in 4|8|16|32) ;; *) die "--bits must be 4, 8, 16 or 32, got $BITS" ;; esac
case "$CHROOT_PYTHON" in python3|python3.[0-9]|python3.[0-9][0-9]) ;; *) die "--python must name an interpreter like python3 or python3.11, got $CHROOT_PYTHON" ;; esac
[ "$ROOTFS" != / ] || die "ROOTFS cannot be /; pass a folder of its own, e.g. build/arm64-rootfs"

# ---- prerequisites: each missing one is a one-line error naming the fix --------------------
[ "$(id -u)" -eq 0 ] || die "debootstrap and chroot need root; run it as root (sudo $0 ...)"
for tool in debootstrap chroot mount umount findmnt realpath; do
  command -v "$tool" >/dev/null || die "$tool is missing; install it (apt-get install debootstrap util-linux coreutils)"
done
command -v "$HOST_PYTHON" >/dev/null || die "$HOST_PYTHON is missing on the host; set HOST_PYTHON to a Python >= 3.10 with qsched-export installed"
if [ -z "$BUNDLE" ]; then
  "$HOST_PYTHON" -c "import torch, diffusers" 2>/dev/null \
    || die "making a bundle needs the export extra on the host (pip install -e '.[export]'), or pass --bundle DIR"
else
  [ -f "$BUNDLE/manifest.json" ] || die "--bundle $BUNDLE has no manifest.json; pass a folder made by qsched-export bundle"
fi
"$HOST_PYTHON" -c "import onnxruntime" 2>/dev/null || die "the host check needs onnxruntime; pip install -e '.[runtime]'"
"$HOST_PYTHON" -m pip --version >/dev/null 2>&1 || die "$HOST_PYTHON has no pip; install python3-pip"
if [ -n "$HOST_RUNTIME_PYTHON" ]; then
  "$HOST_RUNTIME_PYTHON" -m venv --help >/dev/null 2>&1 \
    || die "--host-runtime-python $HOST_RUNTIME_PYTHON is not a Python with venv; pass an interpreter such as python3.10"
fi

HOST_ARCH=$(uname -m)
if [ "$HOST_ARCH" != aarch64 ]; then
  command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing; apt-get install qemu-user-static binfmt-support"
  BINFMT=/proc/sys/fs/binfmt_misc
  if [ ! -e "$BINFMT/status" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || die "binfmt_misc is not mounted and cannot be; run: mount -t binfmt_misc binfmt_misc $BINFMT"
  fi
  if [ ! -e "$BINFMT/qemu-aarch64" ] && command -v update-binfmts >/dev/null; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true  # checked just below
  fi
  grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null \
    || die "no aarch64 interpreter registered in binfmt_misc; apt-get install qemu-user-static binfmt-support, then update-binfmts --enable qemu-aarch64"
  # Without the F (fix-binary) flag the kernel looks for the interpreter inside the chroot.
  grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
    || die "the qemu-aarch64 binfmt entry lacks the F flag, so it cannot run inside a chroot; reinstall Debian's qemu-user-static (it registers with F)"
  QEMU_CPUS=$(qemu-aarch64-static -cpu help || true)  # it lists the models, then exits 1
  grep -qw -- "$QEMU_CPU_MODEL" <<<"$QEMU_CPUS" \
    || die "qemu-aarch64-static has no CPU model $QEMU_CPU_MODEL; pick one from: qemu-aarch64-static -cpu help"
fi

mkdir -p "$WORK"
LOG=$WORK/rehearsal.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
# rich wraps tables at 80 columns when writing to a pipe; the parity table needs more.
export COLUMNS=110

# ---- logging with timings ------------------------------------------------------------------
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
# timed WHERE CMD...: log the command, run it, log its wall time (WHERE: host or aarch64).
timed() {
  local where=$1 start rc=0
  shift
  say "$where \$ $*"
  start=$(now)
  "$@" || rc=$?
  if [ "$where" = aarch64 ] && [ "$HOST_ARCH" != aarch64 ]; then
    say "  -> exit $rc in $(elapsed "$start") s (aarch64 under qemu emulation: not a benchmark)"
  else
    say "  -> exit $rc in $(elapsed "$start") s"
  fi
  return "$rc"
}

# into_file LOG CMD...: run CMD with its output in LOG only.
into_file() {
  local log=$1
  shift
  "$@" >"$log" 2>&1
}

# ---- the rootfs: mounts are always undone, even on failure ---------------------------------
unmount_under() {
  local dir=$1 target
  # Deepest first, so nested mounts (e.g. dev/pts) go before their parents.
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0 "/", d) == 1' | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target"
  done
}
trap 'unmount_under "$ROOTFS"; unmount_under "$ROOTFS.partial"' EXIT

say "arm64 rehearsal of the Jetson path on $(uname -srm), $(nproc) CPUs"
say "repository $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '(not a git checkout)'); rootfs $ROOTFS ($SUITE); work $WORK"
T0=$(now)

# ---- host side: the wheel and the bundle, made with the real CLI ---------------------------
rm -rf "$WORK/wheel" "$WORK/host-out"
timed host "$HOST_PYTHON" -m pip wheel --quiet --no-deps "$REPO" -w "$WORK/wheel"
WHEELS=("$WORK"/wheel/qsched_export-*.whl)
if [ ${#WHEELS[@]} -ne 1 ] || [ ! -f "${WHEELS[0]}" ]; then
  die "expected one qsched_export wheel in $WORK/wheel, found: ${WHEELS[*]}"
fi
WHEEL=$(basename "${WHEELS[0]}")

cd "$REPO"  # python -m qsched_export runs this checkout's CLI
if [ -z "$BUNDLE" ]; then
  BUNDLE=$WORK/bundle-w$BITS
  # Progress bars off: they are noise in a log.
  TQDM_DISABLE=1 DIFFUSERS_VERBOSITY=error timed host "$HOST_PYTHON" -m qsched_export bundle --target tensorrt --bits "$BITS" \
    --out "$BUNDLE" --overwrite
fi
BUILT_NAME=built-onnxruntime
# The same bundle built and checked on the host: the x86 side of the parity comparison.
timed host "$HOST_PYTHON" -m qsched_export build --from "$BUNDLE" --target onnxruntime --bits "$BITS" \
  --out "$WORK/host-out/$BUILT_NAME" --no-check
HOST_PARITY=PASSED
timed host "$HOST_PYTHON" -m qsched_export check --artifact "$WORK/host-out/$BUILT_NAME" || HOST_PARITY="FAILED"

# What pip would install on JetPack 6 (Ubuntu 22.04: glibc 2.35, Python 3.10, aarch64): resolved
# and downloaded, not run (no aarch64 Python 3.10 here). Fails if any runtime dependency has no
# such wheel.
JETPACK6_TAGS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  JETPACK6_TAGS+=(--platform "${tag}_aarch64")
done
timed host "$HOST_PYTHON" -m pip download --quiet --only-binary=:all: --implementation cp --python-version 3.10 \
  "${JETPACK6_TAGS[@]}" --dest "$WORK/jetpack6-cp310-aarch64-wheels" "$WORK/wheel/${WHEEL}[runtime]"
JETPACK6_GOT=""
for whl in "$WORK"/jetpack6-cp310-aarch64-wheels/{numpy,onnx,onnxruntime,tokenizers,pillow,typer,rich}-*.whl; do
  if [ -f "$whl" ]; then JETPACK6_GOT+=" $(basename "$whl")"; fi
done
say "JetPack 6 (cp310, aarch64) would get:$JETPACK6_GOT"

if [ -n "$HOST_RUNTIME_PYTHON" ]; then
  # The same device-side commands with another host interpreter (JetPack 6's Python is 3.10),
  # from the wheel in a venv of their own, run outside the checkout so the wheel is what runs.
  HOST_VENV=$WORK/host-venv-$(basename "$HOST_RUNTIME_PYTHON")
  [ -x "$HOST_VENV/bin/python" ] || timed host "$HOST_RUNTIME_PYTHON" -m venv "$HOST_VENV"
  timed host "$HOST_VENV/bin/python" -m pip install --quiet --only-binary=:all: "$WORK/wheel/${WHEEL}[runtime]"
  timed host "$HOST_VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$WORK/wheel/$WHEEL"
  cd "$WORK"
  timed host "$HOST_VENV/bin/python" -c 'import importlib.util as u, platform, sys; print(platform.machine(), sys.version.split()[0]); assert u.find_spec("torch") is None, "torch is installed"; print("torch: not installed")'
  timed host "$HOST_VENV/bin/qsched-export" build --from "$BUNDLE" --target onnxruntime --bits "$BITS" --out "host-out/$BUILT_NAME-venv" --no-check
  timed host "$HOST_VENV/bin/qsched-export" check --artifact "host-out/$BUILT_NAME-venv" || HOST_PARITY="FAILED"
  timed host "$HOST_VENV/bin/qsched-export" run --artifact "host-out/$BUILT_NAME-venv" --prompt "$PROMPT" --out host-out/image-venv.png
  cd "$REPO"
fi

DONE_MARK=.qsched-rehearsal-rootfs
if [ -f "$ROOTFS/$DONE_MARK" ]; then
  say "reusing the arm64 rootfs in $ROOTFS (made $(cat "$ROOTFS/$DONE_MARK"))"
else
  [ ! -e "$ROOTFS" ] || die "$ROOTFS exists but is not a finished rehearsal rootfs; remove it or pass another folder"
  # Build beside the target and rename at the end, so an interrupted debootstrap is never reused.
  if [ -e "$ROOTFS.partial" ]; then
    unmount_under "$ROOTFS.partial"
    rm -rf --one-file-system "$ROOTFS.partial"
  fi
  mkdir -p "$(dirname "$ROOTFS")"
  # minbase + python3-venv: the Python a JetPack-like system has, nothing of this project.
  # debootstrap's own log (hundreds of lines) goes to a file; its tail is shown if it fails.
  if ! timed host into_file "$WORK/debootstrap.log" debootstrap --arch=arm64 --variant=minbase \
      --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS.partial" "$MIRROR"; then
    tail -n 20 "$WORK/debootstrap.log"
    die "debootstrap failed (log: $WORK/debootstrap.log)"
  fi
  date -u +%Y-%m-%dT%H:%M:%SZ >"$ROOTFS.partial/$DONE_MARK"
  mv "$ROOTFS.partial" "$ROOTFS"
fi

mount -t proc proc "$ROOTFS/proc"
mount --bind /dev "$ROOTFS/dev"
# No /sys: under qemu it shows the x86 host's CPUs, and onnxruntime 1.32's cpuinfo then crashes
# (segfault on import, seen here); without it cpuinfo's init fails, ORT warns once and runs.
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# The host's trust store, so pip reaches the package index the way the host does (also behind
# a TLS-inspecting proxy whose CA only the host trusts).
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
rm -rf "$ROOTFS/rehearsal"
mkdir -p "$ROOTFS/rehearsal"
cp -r "$BUNDLE" "$ROOTFS/rehearsal/bundle"
cp "$WORK/wheel/$WHEEL" "$ROOTFS/rehearsal/"

VENV=/opt/qsched-venv-$CHROOT_PYTHON
# A clean environment: nothing of the host's Python setup leaks in (a PIP_INDEX_URL is kept, for
# hosts that must use a mirror).
CHROOT_ENV=(HOME=/root LANG=C.UTF-8 TERM=dumb COLUMNS=110 PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin"
  PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
if [ -n "${PIP_INDEX_URL:-}" ]; then CHROOT_ENV+=(PIP_INDEX_URL="$PIP_INDEX_URL"); fi
# qemu-user reads QEMU_CPU from the environment of every process it runs.
if [ "$HOST_ARCH" != aarch64 ]; then CHROOT_ENV+=(QEMU_CPU="$QEMU_CPU_MODEL"); fi
in_rootfs() {
  chroot "$ROOTFS" /usr/bin/env -i "${CHROOT_ENV[@]}" /bin/sh -c "cd /rehearsal && $1"
}

SYS_PYTHON=/usr/bin/$CHROOT_PYTHON  # Debian's, not the venv's (the venv is first on PATH)
timed aarch64 in_rootfs "uname -m; cat /etc/debian_version; $SYS_PYTHON -VV" \
  || die "$CHROOT_PYTHON is not in the rootfs (bookworm has python3 = 3.11 only); pass --python python3"
# The CPU features the aarch64 code sees (getauxval), which pick ONNX Runtime's int8 kernels.
cat >"$ROOTFS/rehearsal/cpu_features.py" <<'PY'
import ctypes
import sys

getauxval = ctypes.CDLL(None).getauxval
getauxval.restype = ctypes.c_ulong
hwcap, hwcap2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2; bits from Linux's asm/hwcap.h
bits = {"asimddp": hwcap >> 20, "sve": hwcap >> 22, "sve2": hwcap2 >> 1, "i8mm": hwcap2 >> 13, "bf16": hwcap2 >> 14}
print(sys.argv[1], " ".join(f"{name}={'yes' if value & 1 else 'no'}" for name, value in bits.items()))
PY
if [ "$HOST_ARCH" != aarch64 ]; then CPU_LABEL="qemu CPU $QEMU_CPU_MODEL:"; else CPU_LABEL="CPU:"; fi
timed aarch64 in_rootfs "$SYS_PYTHON cpu_features.py '$CPU_LABEL'"

# ---- aarch64 side: install the wheel with the runtime extra, then build, check, run --------

if [ ! -x "$ROOTFS$VENV/bin/python" ]; then
  timed aarch64 in_rootfs "$SYS_PYTHON -m venv $VENV"
fi
# --only-binary: a package without an aarch64 wheel is an error, never a compile under qemu.
timed aarch64 in_rootfs "pip install --progress-bar off --only-binary=:all: '${WHEEL}[runtime]'"
# The wheel's version does not change between edits: reinstall the project itself every run.
timed aarch64 in_rootfs "pip install --no-deps --force-reinstall --quiet '$WHEEL'"
timed aarch64 in_rootfs "pip list --format=freeze"
timed aarch64 in_rootfs "python -c 'import importlib.util as u, platform, sys; \
print(platform.machine(), sys.version.split()[0]); assert u.find_spec(\"torch\") is None, \"torch is installed\"; print(\"torch: not installed\")'"
timed aarch64 in_rootfs "qsched-export info"

timed aarch64 in_rootfs "qsched-export build --from bundle --target onnxruntime --bits $BITS --out out/$BUILT_NAME --no-check"
ARM_PARITY=PASSED
timed aarch64 in_rootfs "qsched-export check --artifact out/$BUILT_NAME" || ARM_PARITY=FAILED
timed aarch64 in_rootfs "qsched-export run --artifact out/$BUILT_NAME --prompt '$PROMPT' --out image.png"
timed aarch64 in_rootfs "python -c 'from PIL import Image; im = Image.open(\"image.png\"); im.load(); print(\"image.png:\", im.format, im.size, im.mode)'"

mkdir -p "$WORK/aarch64-out"
cp "$ROOTFS/rehearsal/image.png" "$ROOTFS/rehearsal/out/$BUILT_NAME/parity.json" "$WORK/aarch64-out/"
say "parity of the same bundle: $HOST_ARCH host $HOST_PARITY, aarch64 $ARM_PARITY (tables above; parity.json and image.png in $WORK/aarch64-out)"
say "total $(elapsed "$T0") s; aarch64 steps ran under qemu emulation: their timings are not benchmarks"
if [ "$ARM_PARITY" != PASSED ] || [ "$HOST_PARITY" != PASSED ]; then
  say "FAILED: parity did not pass on every CPU"
  exit 1
fi
say "PASSED: the bundle made on $HOST_ARCH built, passed parity and wrote image.png on aarch64 ($CHROOT_PYTHON, no torch)"
