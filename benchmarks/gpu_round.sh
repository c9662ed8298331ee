#!/usr/bin/env bash
# benchmarks/gpu_round.py on a GPU machine, as one prepared command (see
# ../shared/gpu/README.md): Ray travels as .dev/ray-site.tar.xz (made by
# ../shared/gpu/make_carry.sh) and "today's" fedsim as .dev/baseline, an earlier
# tree (git archive REV fedsim lightning_modules configs | tar -x -C .dev/baseline).
#
#   bash benchmarks/gpu_round.sh [DEADLINE_S] [gpu_round.py options]
#
# DEADLINE_S (default 450): no variant or run starts after it; give the command a
# time limit about two minutes longer (a compile started just before still ends).
set -uo pipefail
deadline=${1:-450}
shift || true
mkdir -p /tmp/site && tar -xJf .dev/ray-site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, ray; print('torch', torch.__version__, 'lightning', lightning.__version__, 'ray', ray.__version__)"
baseline=()
[ -d .dev/baseline ] && baseline=(--baseline .dev/baseline)
python3 benchmarks/gpu_round.py --parts client,plain,run,vectorized "${baseline[@]}" \
    --deadline-s "$deadline" --out "${OUT:-/tmp/gpu_round}" "$@"
