#!/bin/bash
# Issue 17 (Deep Defense), CIFAR-10: the paper's ConvNet (its Table 4; NIN is not built) trained by the standard
# recipe, then fine-tuned by Deep Defense and its three peers, one after the other on 1 thread, into runs/dd17/.
# Fine-tunes as on MNIST (runs/issue17_mnist.sh): batch 100, base lr 5e-4, cosine, --keep last; the paper runs 50
# epochs on CIFAR-10. Budget cut: 5 epochs, and Deep Defense / Adv. Train I on a fixed 10,000-image subset
# (--train-count 10000): a Deep Defense step costs ~75x a plain one on 1 CPU thread on MNIST's LeNet, ~50x on the
# ConvNet (23 against ~1,150 images/s in runs/dd17's logs). NIN's c = 70 does not apply.
# The reference: 30 epochs of one cycle peaking at lr 0.05 (the ConvNet has no batch normalization; the trainer's
# CIFAR-10 default of 0.2 is for BN ResNets and diverges on the BReLU paper's BN-less CNN, runs/issue16_cifar.sh).
# Two copies may run at once (one per free core) and share the fine-tunes, as runs/issue16_cifar.sh's copies do;
# the fine-tunes wait for the reference (a copy that finds it training elsewhere stops).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/dd17
mkdir -p $OUT
common="--data-dir ../shared/data --dataset cifar10 --threads 1 --no-progress --test-count 2000"
tune="--epochs 5 --batch-size 100 --lr 5e-4 --schedule cosine --keep last"
. runs/_train_queue.sh
model=convnet_cifar10
run $model --model $model --recipe standard --epochs 30 --lr 0.05
[ -f $OUT/$model.json ] || { echo "$model: no reference (yet), its fine-tunes skipped"; exit 1; }
ref="--model $model --init-from $OUT/$model $tune"
run ${model}_dd $ref --recipe deep_defense --dd-lambda 15 --dd-c 25 --dd-d 5 --train-count 10000
run ${model}_parseval $ref --recipe parseval --parseval-beta 3e-4 --parseval-fraction 0.3
run ${model}_advtrain1 $ref --recipe deepfool_at --train-count 10000
run ${model}_advtrain2 $ref --recipe fgsm_at --eps 8/255 --clean-weight 0.5
echo "all done"
