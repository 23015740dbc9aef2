#!/usr/bin/env bash
# One device call: train samples/shapes-flux (16-channel VAE, then FLUX transformer + T5), draw the
# evaluation images, and archive. Every stage stops itself by wall clock; the archives are written
# whatever failed. Usage, from the repository root:
#   bash samples/train/run_flux_device.sh OUT_DIR [VAE_SECONDS] [FLUX_SECONDS] [EVAL_SECONDS] [flux_train args]
# Defaults 110 / 265 / 40. Wall time is about VAE + FLUX + EVAL + 50 s (imports, data, saving,
# archives): ~465 s with the defaults. Training is killed at VAE + FLUX + 60 s and evaluation at
# EVAL + 40 s if their own clocks fail, so the archives always get written.
# Writes to OUT_DIR: shapes-flux.tar.gz (shapes-flux/, flux_stats.json, logs), flux-eval.tar.gz (eval/:
# uint8 images per sampler setting + eval_meta.json), flux_stats.json, train.log, eval.log.
# SMOKE=1 runs the same steps on the CPU in about a minute (flux_train --smoke, 8 prompts).
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); vae_s=${2:-110}; flux_s=${3:-265}; eval_s=${4:-40}
shift $(($# < 4 ? $# : 4))
export PYTHONUNBUFFERED=1
run="$out/run"
mkdir -p "$run"
t0=$(date +%s)
stamp() { echo "[run_flux_device +$(($(date +%s) - t0))s] $*"; }

prompts=256
train_args=(--out "$run" --vae-seconds "$vae_s" --flux-seconds "$flux_s")
if [ "${SMOKE:-0}" = 1 ]; then train_args+=(--smoke); prompts=8; fi
stamp "training: $([ "${SMOKE:-0}" = 1 ] && echo "smoke (CPU, 2 steps per stage)" || echo "vae ${vae_s}s, flux ${flux_s}s")"
timeout --kill-after=10 $((vae_s + flux_s + 60)) \
  python3 -m samples.train.flux_train "${train_args[@]}" "$@" 2>&1 | tee "$out/train.log"
stamp "training exited (status ${PIPESTATUS[0]})"

if [ -f "$run/shapes-flux/model_index.json" ]; then
  fp32=()
  [ -f "$run/shapes-flux-fp32/model_index.json" ] && fp32=(--fp32 "$run/shapes-flux-fp32")
  timeout --kill-after=5 $((eval_s + 40)) \
    python3 -m samples.train.flux_eval generate --pipeline "$run/shapes-flux" "${fp32[@]}" --out "$run/eval" \
      --prompts "$prompts" --seconds "$eval_s" 2>&1 | tee "$out/eval.log"
  stamp "evaluation exited (status ${PIPESTATUS[0]})"
else
  stamp "no pipeline saved: evaluation skipped"
fi

# Archive whatever exists, with the logs; the fp32 twin stays behind (only for the fp16 check).
cd "$run" || exit 1
files=()
for f in shapes-flux flux_stats.json; do [ -e "$f" ] && files+=("$f"); done
logs=()
for f in train.log eval.log; do [ -e "$out/$f" ] && logs+=("$f"); done
tar -czf "$out/shapes-flux.tar.gz" "${files[@]}" -C "$out" "${logs[@]}"
[ -d eval ] && tar -czf "$out/flux-eval.tar.gz" eval
[ -f flux_stats.json ] && cp flux_stats.json "$out/"
cd "$out" && rm -rf "$run"
stamp "archives: $(ls -la "$out" | grep -c 'tar.gz') written"
ls -la "$out"
