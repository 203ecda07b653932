#!/usr/bin/env bash
# Fingerprints of five tiny-run variants (tools/fingerprint_run.py), for refactors that claim to change nothing:
#   bash tools/fingerprint_variants.sh /tmp/fp/before    # on the old tree
#   bash tools/fingerprint_variants.sh /tmp/fp/after     # on the new one; the hashes must be equal
# Run it alone: it trains five short runs (about 4 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PYTHON:-.venv/bin/python}
out=$1
mkdir -p "$(dirname "$out")"
$P tools/fingerprint_run.py --json "$out-default.json" >/dev/null 2>&1
$P tools/fingerprint_run.py --json "$out-grpo-shared.json" -- --model.mode shared_lora \
  --model.algorithm.estimator grpo --model.algorithm.group_size 2 >/dev/null 2>&1
$P tools/fingerprint_run.py --json "$out-full-sampler.json" -- --model.mode shared_full \
  --model.algorithm.old_logprobs sampler --model.algorithm.micro_batch_size 3 >/dev/null 2>&1
$P tools/fingerprint_run.py --json "$out-diag-phases.json" --steps 6 -- \
  --trainer.callbacks+ abspo.callbacks.CollapseDiagnostics --trainer.callbacks.every_n_batches 1 \
  --model.schedule.mode phases --model.schedule.phase_steps 2 --model.algorithm.kl_mode loss_k3 \
  --model.algorithm.update_epochs 2 >/dev/null 2>&1
$P tools/fingerprint_run.py --json "$out-accum.json" --steps 4 -- --model.algorithm.accumulate_batches 2 \
  --model.anchor initial >/dev/null 2>&1
for f in "$out"-*.json; do echo "$f"; grep -E "sha256\"|safetensors" "$f"; done
