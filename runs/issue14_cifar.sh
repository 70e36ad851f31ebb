#!/bin/bash
# Issue 14 (WNLL/TVM paper, Table 2's data regimes), the CIFAR-10 ResNet-56 models not yet trained: softmax on
# TVM data, and end-to-end WNLL on TVM data and on original + TVM data. Fine-tuned from the public resnet56 on
# 1 thread each, one after the other. Budget cut: 3 epochs (softmax) and 2 epochs, i.e. one linear and one WNLL
# epoch (WNLL), against 5 for resnet56_tvm_aug and the paper's full-length training from scratch.
# Each writes its artifact to purify/weights/ directly; an interrupted run resumes from its runs/ checkpoint.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
common="--data-dir ../shared/data --dataset cifar10 --model resnet56 --init-from resnet56 --threads 1 --no-progress --keep last"
run() {  # name, then the recipe flags
  name=$1; shift
  [ -f purify/weights/$name.json ] && { echo "$name: done"; return; }
  $PY -m purify.training.adversarial $common --out purify/weights/$name --checkpoint runs/$name.pt "$@" --resume \
    > runs/$name.nohup 2>&1 || echo "$name: FAILED (see runs/$name.nohup)"
}
run resnet56_tvm_data --recipe standard --tvm-regime tvm --epochs 3 --lr 0.02
run resnet56_wnll_e2e_tvm_aug --recipe wnll_alternating --tvm-regime both --epochs 2 --lr 0.01
run resnet56_wnll_e2e_tvm_data --recipe wnll_alternating --tvm-regime tvm --epochs 2 --lr 0.01
echo "all done"
