#!/usr/bin/env bash
# The lent-GPU runbook for tools/gpu_check.py (issues 9 and 11): two calls, each well inside the 10-minute limit.
#
# Here, once, before the first call (the tokenizer travels as a carried, ignored folder; nothing else is needed there:
# the device image has torch, lightning, transformers, peft and torchmetrics, and this check imports no jsonargparse):
#     .venv/bin/python tools/gpu_check.py --export-tokenizer gpu_tokenizer
#     mkdir -p .git/info && echo /gpu_tokenizer/ >> .git/info/exclude
# Then, with the device tool (carry: ["gpu_tokenizer"]):
#     bash tools/gpu_check.sh steps       # one ABS step at 7B and at 14B shape, judge colocated (~5 min, estimated)
#     bash tools/gpu_check.sh decoding    # rollout decoding options at 7B shape (~4 min, estimated)
# The figures come back as $OUT/gpu_check_<part>.json and in the output's tail.
set -euo pipefail
part=${1:-steps}
case "$part" in
  steps) extra=(--no-decoding) ;;
  decoding) extra=(--decoding-only --models 7b) ;;
  *) echo "usage: bash tools/gpu_check.sh steps|decoding" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, transformers, lightning, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'lightning', lightning.__version__, 'peft', peft.__version__)"
python3 tools/gpu_check.py --tokenizer gpu_tokenizer "${extra[@]}" --json "${OUT:-.}/gpu_check_$part.json" "${@:2}"
