#!/bin/bash
# Ship a finished run: its log is copied beside the artifact, then its own command re-run with
# --out purify/weights/<name> --resume (the finished checkpoint only re-does the test evaluation).
# usage: runs/ship.sh runs/dd17/mlp_mnist_dd
set -eu
cd "$(dirname "$0")/.."
src=$1; name=$(basename "$src")
cmd=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['command'])" "$src.json")
cp "$src.log" "purify/weights/$name.log"
# the run's own flags, its --out swapped for the package's weights folder
args=$(echo "$cmd" | sed -e "s|^python ||" -e "s|--out $src |--out purify/weights/$name |")
.venv/bin/python $args --resume
