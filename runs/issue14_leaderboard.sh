#!/bin/bash
# Issue 14: the leaderboard rows of the seed-000 models, cheap rows (no TVM in front) first, then the rows
# with TVM in front (APGD-CE + EOT over the exact TV gradient; ~40 min each on one thread). Cells are
# committed (benchmarks/results/leaderboard/cells), so a row interrupted here resumes on the next run.
set -u
cd "$(dirname "$0")/.."
for row in tvm-data wnll-e2e-tvm-aug wnll-e2e-tvm-data tvm-aug-tvm tvm-data-tvm wnll-e2e-tvm-aug-tvm; do
  echo "$(date +%T) $row: start"
  .venv/bin/python -m benchmarks leaderboard --rows $row --data-dir ../shared/data --threads 1 --no-progress \
    > runs/leaderboard-$row.nohup 2>&1 || echo "$row: FAILED (see runs/leaderboard-$row.nohup)"
  echo "$(date +%T) $row: end"
done
echo "all done"
