#!/bin/bash
# Issue 16 (BReLU + GDA paper), MNIST models: the paper's CNN and ResNet, ReLU / bounded ReLU, and the peer
# defenses' recipes, trained one after the other on 1 thread. Budget cut: 6 epochs each (GDA: 3 epochs of the
# paper's ten noisy copies per image, i.e. 33 passes over noisy or clean images); the paper states no epoch count.
# Artifacts go to runs/mnist16/; each is shipped by re-running its command with --resume --out purify/weights/<name>
# (a finished run only re-does the test evaluation and writes the artifact there).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
common="--data-dir ../shared/data --dataset mnist --threads 1 --no-progress --test-count 2000"
run() {  # name, then the model / recipe flags
  name=$1; shift
  [ -f runs/mnist16/$name.json ] && { echo "$name: done"; return; }
  $PY -m purify.training.adversarial $common --out runs/mnist16/$name --checkpoint runs/$name.pt "$@" --resume \
    > runs/$name.nohup 2>&1 || echo "$name: FAILED (see runs/$name.nohup)"
}
run cnn_mnist --model cnn_mnist --recipe standard --epochs 6
run cnn_mnist_brelu --model cnn_mnist --activation brelu --recipe standard --epochs 6
run cnn_mnist_gda --model cnn_mnist --recipe gda --epochs 3
run cnn_mnist_gda_brelu --model cnn_mnist --activation brelu --recipe gda --epochs 3
run cnn_mnist_ls --model cnn_mnist --recipe label_smoothing --epochs 6
run cnn_mnist_fgsm_at --model cnn_mnist --recipe fgsm_at --epochs 6
run cnn_mnist_vat --model cnn_mnist --recipe vat --epochs 6
run resnet_mnist --model resnet_mnist --recipe standard --epochs 6
run resnet_mnist_brelu --model resnet_mnist --activation brelu --recipe standard --epochs 6
echo "all done"
