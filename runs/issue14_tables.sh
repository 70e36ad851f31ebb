#!/bin/bash
# Issue 14: the paper's Table 1 / Table 2 harness configs, one after the other on 1 thread; a config whose model
# is still training waits for its artifact (purify/weights/<model>.json, and its WNLL head's).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
table() {  # config, then the artifacts it needs
  config=$1; shift
  [ -f benchmarks/results/$config/cells.csv ] && { echo "$config: done"; return; }
  for a in "$@"; do
    until [ -f purify/weights/$a.json ]; do sleep 60; done
  done
  echo "$(date +%T) $config: start"
  $PY -m benchmarks run $config --data-dir ../shared/data --threads 1 --no-progress > runs/$config.nohup 2>&1 \
    || echo "$config: FAILED (see runs/$config.nohup)"
  echo "$(date +%T) $config: end"
}
table wnll_tvm_table2_tvm_aug resnet56_tvm_aug
table wnll_tvm_table2_tvm_data resnet56_tvm_data
table wnll_head_table2_e2e resnet56_wnll_e2e_head
table wnll_head_table2_e2e_tvm_aug resnet56_wnll_e2e_tvm_aug_head
table wnll_head_table2_e2e_tvm_data resnet56_wnll_e2e_tvm_data_head
table wnll_tvm_table1_softmax_on_wnll
table wnll_tvm_table1_wnll_on_softmax
echo "all done"
