#!/bin/bash
# Issue 14: each end-to-end WNLL ResNet-56's plain WNLL head (templates from its features), as soon as the network's
# artifact exists (runs/issue14_cifar.sh trains them).
set -u
cd "$(dirname "$0")/.."
for m in resnet56_wnll_e2e_tvm_aug resnet56_wnll_e2e_tvm_data; do
  [ -f purify/weights/${m}_head.json ] && { echo "${m}_head: done"; continue; }
  until [ -f purify/weights/$m.json ]; do sleep 60; done
  .venv/bin/python -m purify.training.wnll --data-dir ../shared/data --model $m --plain --out purify/weights/${m}_head \
    --threads 1 --no-progress > runs/${m}_head.nohup 2>&1 || echo "${m}_head: FAILED"
  echo "$(date +%T) ${m}_head: written"
done
