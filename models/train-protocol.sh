#!/usr/bin/env bash
# The training runs behind the shipped protocol-trained models (models/README.md), in the order they were
# run: the paper's protocol (SPEC §5: SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine schedule,
# batch 64) until the eval-mode accuracy on all 60,000 training images reaches 99.5 % (README: stop rule).
# MNIST-type data is not augmented (a mirrored digit is another symbol). Inputs are the data's native
# 1×28×28 (no resizing, no channel replication).
#
# Usage: models/train-protocol.sh BIN OUTDIR   (BIN: a release ntk-pipeline; each run logs to OUTDIR/NAME.out)
set -u
bin=${1:?usage: train-protocol.sh BIN OUTDIR}
out=${2:?usage: train-protocol.sh BIN OUTDIR}
mkdir -p "$out"
run() {
  local name=$1; shift
  if [ -e "$out/$name.safetensors" ] && grep -q '"finished": true' "$out/$name.log.json" 2>/dev/null; then
    return 0
  fi
  local resume=()
  [ -e "$out/$name.train-state.safetensors" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name: $bin train $* --out $out/$name.safetensors ${resume[*]}"
  "$bin" train "$@" --out "$out/$name.safetensors" "${resume[@]}" > "$out/$name.out" 2>&1
  echo "$(date -u +%FT%TZ) end $name: exit $?"
}
r9=(--arch resnet9 --width 32 --input-shape 1,28,28 --target-acc 0.995)
run resnet9-mnist-s0 "${r9[@]}" --data mnist --epochs 3 --seed 0
run resnet9-mnist-s1 "${r9[@]}" --data mnist --epochs 3 --seed 1
run mobilenet-mnist-s0 --arch mobilenet --input-shape 1,28,28 --target-acc 0.995 --data mnist --epochs 3 --seed 0
run resnet9-mnist-s2 "${r9[@]}" --data mnist --epochs 3 --seed 2
run resnet9-mnist-s3 "${r9[@]}" --data mnist --epochs 3 --seed 3
run resnet9-mnist-s4 "${r9[@]}" --data mnist --epochs 3 --seed 4
run resnet9-fashion-mnist-s0 "${r9[@]}" --data fashion-mnist --epochs 10 --seed 0
