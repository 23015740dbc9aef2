#!/usr/bin/env bash
# One device call: the diffusion model and both judges train side by side on one GPU
# (small models leave it mostly idle, so three processes overlap well). Usage:
#   bash samples/train/run_device.sh OUT_DIR DIFFUSION_SECONDS JUDGE_SECONDS [extra train.py args]
# JUDGE_SECONDS=0 trains the diffusion model alone.
set -uo pipefail
out=$1; diff_s=$2; judge_s=$3; shift 3
export PYTHONUNBUFFERED=1
mkdir -p "$out/run"
pids=()
if [ "$judge_s" != 0 ]; then
  for j in a b; do
    python3 -m samples.train.train --stage judge --judge $j --seconds "$judge_s" --batch 512 --out "$out/run" > "$out/judge_$j.log" 2>&1 &
    pids+=($!)
  done
fi
python3 -m samples.train.train --stage diffusion --seconds "$diff_s" --out "$out/run" "$@" 2>&1 | tee "$out/diffusion.log"
# A failed judge must not cost the diffusion model: archive whatever exists.
for pid in "${pids[@]}"; do wait "$pid" || echo "a judge failed"; done
cd "$out/run"
tar -czf ../shapes-sd.tar.gz shapes-sd diffusion_stats.json || true
[ -d judges ] && tar -czf ../judges.tar.gz judges judge_*_stats.json
cd - && rm -rf "$out/run"
