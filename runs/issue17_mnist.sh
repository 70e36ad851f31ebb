#!/bin/bash
# Issue 17 (Deep Defense, Yan et al. 2018), MNIST: the paper's MLP and LeNet (its Table 4), a reference of each trained
# by the standard recipe, then each reference fine-tuned by Deep Defense and its three peers, one after the other on
# 1 thread. Artifacts, checkpoints and console logs go to runs/dd17/; `python -m benchmarks.deep_defense` reads them.
#
# References: 10 epochs of the standard recipe (one cycle peaking at 0.05, batch 128, SGD 0.9, weight decay 5e-4).
# The paper's references are MatConvNet models with no stated schedule; 10 epochs is our cut (MLP ~2 s, LeNet ~17 s
# an epoch here).
# Fine-tunes: the paper's Table 3 for MNIST, batch 100, 5 epochs, base lr 5e-4, with momentum 0.9 and weight decay
# 5e-4 kept from the references, the same for every method. The paper halves the rate after 4 epochs; the trainer has
# no step schedule, so the rate follows a cosine from 5e-4 down to 0 (average 2.5e-4 against the paper's 4.5e-4).
# The last epoch's weights are kept (--keep last), as the paper does (no selection on validation).
#   deep_defense  λ 15, c 25, d 5, 5 unrolled DeepFool iterations over all 10 classes (the paper's; trainer defaults)
#   parseval      β 1e-4, 30 % of each weight's rows per step (the paper's MNIST setting; trainer defaults)
#   deepfool_at   Adv. Train I: DeepFool examples (L2, 50 iterations) of the frozen reference, no clean term
#   fgsm_at       Adv. Train II: Goodfellow et al.'s 0.5·J(x) + 0.5·J(x_fgsm) at their MNIST ε 0.25
# Measured CPU cost (1 thread, on a machine shared with two other trainings; one epoch on 1,000 images scaled to 55,000,
# plus the per-epoch validation: DeepFool rho2 on 1,000 images, fgsm_at's PGD-40):
#   MLP:   reference ~0.5 min in all; deep_defense ~1.9 min/epoch; deepfool_at ~1.3; fgsm_at ~0.2; parseval ~0.1 (~20 min)
#   LeNet: reference ~3 min in all;   deep_defense 15-20 min/epoch; deepfool_at ~20; fgsm_at ~1.8; parseval ~0.6 (~3.5 h)
# Budget cut (this session's 2 cores): LeNet's deep_defense and deepfool_at fine-tunes see a fixed fifth of the
# training set (--train-count 11000, the first 11,000 images) in each of their 5 epochs: ~1 hour saved each.
# In all about 1.5 hours. A Deep Defense step at batch 100 costs 75x (LeNet, 2.2 s) to 94x (MLP, 0.32 s) a plain one.
# Resumable: rerun the script; a finished run (its .json exists) is skipped, an interrupted one resumes.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/dd17
mkdir -p $OUT
common="--data-dir ../shared/data --dataset mnist --threads 1 --no-progress --test-count 2000"
tune="--epochs 5 --batch-size 100 --lr 5e-4 --schedule cosine --keep last"
run() {  # name, then the model / recipe flags
  name=$1; shift
  [ -f $OUT/$name.json ] && { echo "$name: done"; return; }
  $PY -m purify.training.adversarial $common --out $OUT/$name --checkpoint $OUT/$name.pt "$@" --resume \
    > $OUT/$name.nohup 2>&1 || echo "$name: FAILED (see $OUT/$name.nohup)"
}
for model in mlp_mnist lenet_mnist; do
  run $model --model $model --recipe standard --epochs 10
  [ -f $OUT/$model.json ] || { echo "$model: no reference, its fine-tunes skipped"; continue; }
  ref="--model $model --init-from $OUT/$model $tune"
  cut=""; [ $model = lenet_mnist ] && cut="--train-count 11000"
  run ${model}_dd $ref --recipe deep_defense --dd-lambda 15 --dd-c 25 --dd-d 5 $cut
  run ${model}_parseval $ref --recipe parseval --parseval-beta 1e-4 --parseval-fraction 0.3
  run ${model}_advtrain1 $ref --recipe deepfool_at $cut
  run ${model}_advtrain2 $ref --recipe fgsm_at --eps 0.25 --clean-weight 0.5
done
echo "all done"
