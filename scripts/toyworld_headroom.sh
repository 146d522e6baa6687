#!/usr/bin/env bash
# How far the toy world's base model and judge go with more training than the 3-hour CPU budget allows
# (docs/toyworld.md, "More training on a GPU"). Run from the repository root on a machine with a GPU and
# the Fashion-MNIST package:
#     bash scripts/toyworld_headroom.sh
# (a) the UNet and text encoder from scratch on the shipped model's VAE (`pretrain --vae_from`), at a GPU's
#     batch, extended cycle by cycle (each a finished model, resumed from --work), the quality grid read
#     after each; (b) meanwhile the judge at each width of JUDGE_WIDTHS on the same renders.
# Sizes come from the environment (defaults: the documented run). Results land in $RES.
set -u
RES=${RES:-/tmp/toyworld-headroom}; WORK=${WORK:-$RES/work}; mkdir -p "$RES"
PY=${PY:-python3}
CYCLES=${CYCLES:-"1125|1125 2500|1125 2500 4500"}  # '|' between runs; each run's last number is its end step
UNET="--unet_batch ${UNET_BATCH:-256} --unet_lr ${UNET_LR:-6e-4} --unet_decay_steps ${DECAY:-500}"
JUDGE_WIDTHS=${JUDGE_WIDTHS:-"64 128"}; JSTEPS=${JSTEPS:-3000}; JBATCH=${JBATCH:-256}; JWORKERS=${JWORKERS:-5}
start=$(date +%s); t() { echo "[$(( $(date +%s) - start )) s] $*"; }
summary() {  # the headline accuracies of a JSON report, from the first '{' of its file
  $PY - "$1" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read(); report = json.loads(text[text.index("{"):])
print({k: {a: round(v[a], 3) for a in ("class", "context", "color") if a in v}
       for k, v in report.items() if isinstance(v, dict) and isinstance(v.get("class"), float)}, flush=True)
PYEOF
}
for w in $JUDGE_WIDTHS; do
  ( $PY -m dreambooth.toyworld.judge train --out "$RES/judge$w" --width "$w" --steps "$JSTEPS" --batch "$JBATCH" \
      --workers "$JWORKERS" --threads 2 > "$RES/judge$w.log" 2>&1 && t "judge, width $w:" && summary "$RES/judge$w/accuracy.json" ) &
done
IFS='|' read -ra runs <<< "$CYCLES"
for cycles in "${runs[@]}"; do
  n=${cycles##* }
  t "UNet to step $n"
  $PY -m dreambooth.toyworld.pretrain --out "$RES/model$n" --work "$WORK" --vae_from dreambooth/assets/base-model \
    --snr_gamma 5 $UNET --unet_cycles $cycles --threads 4 > "$RES/pretrain$n.log" 2>&1 || { tail -5 "$RES/pretrain$n.log"; break; }
  t "quality at step $n:"
  $PY -m dreambooth.toyworld.quality --model "$RES/model$n" --record --sheet "$RES/grid$n.png" --threads 4 \
    > "$RES/quality$n.log" 2>&1 || { tail -5 "$RES/quality$n.log"; break; }
  summary "$RES/quality$n.log"
done
wait
t "done"
