#!/bin/bash
# Issue 16 (BReLU + GDA paper), CIFAR-10 models for Table 5 and Figure 5: the paper's CIFAR-10 CNN with each defense,
# and its ResNet (the black-box source), one after the other on 1 thread, into runs/cifar16/.
# Budget cuts (2 CPU cores; ~2.7 min per plain epoch of 45,000 images on a free core, 280 img/s): 15 epochs for the
# plain recipes (the paper states no epoch count); GDA with 2 noisy copies per image and step instead of the paper's
# ten (--gda-copies, recorded in the artifact) for 10 epochs; VAT and FGSM AT 10 epochs. About 6 CPU-hours in all:
# plan it over two sessions; a killed run resumes from its checkpoint (commit runs/cifar16/*.pt with git add -f
# before a session ends).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/cifar16
mkdir -p $OUT
common="--data-dir ../shared/data --dataset cifar10 --threads 1 --no-progress --test-count 2000"
run() {  # name, then the model / recipe flags
  name=$1; shift
  [ -f $OUT/$name.json ] && { echo "$name: done"; return; }
  $PY -m purify.training.adversarial $common --out $OUT/$name --checkpoint $OUT/$name.pt "$@" --resume \
    > $OUT/$name.nohup 2>&1 || echo "$name: FAILED (see $OUT/$name.nohup)"
}
run cnn_cifar10 --model cnn_cifar10 --recipe standard --epochs 15
run resnet_cifar10 --model resnet_cifar10 --recipe standard --epochs 15
run cnn_cifar10_gda --model cnn_cifar10 --recipe gda --gda-copies 2 --epochs 10
run cnn_cifar10_gda_brelu --model cnn_cifar10 --activation brelu --recipe gda --gda-copies 2 --epochs 10
run cnn_cifar10_ls --model cnn_cifar10 --recipe label_smoothing --epochs 15
run cnn_cifar10_fgsm_at --model cnn_cifar10 --recipe fgsm_at --epochs 10
run cnn_cifar10_vat --model cnn_cifar10 --recipe vat --epochs 10
echo "all done"
