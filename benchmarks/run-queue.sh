#!/usr/bin/env bash
# The training benchmarks in the order the open work needs them, each resumable: run this in the background,
# stop it at any time, run it again later and every script picks up where it stopped (--continue keeps the rows
# already in its JSON; trainings resume from their cached checkpoints).  A script whose JSON holds rows of another
# dense model refuses --continue with one line and the queue goes on with the next script: the dense model changed
# (retrained on another machine or thread count), so run that line again without --continue.
#
#   nohup bash benchmarks/run-queue.sh > benchmarks/.cache/queue.log 2>&1 &
#
# Timing benchmarks (bcnn_throughput.py, surgery_speedup.py --time, width_speedup.py, overhead.py) are not here:
# they need a quiet machine, never next to a training run.
set -u
cd "$(dirname "$0")"
PY=${PYTHON:-python}

step() {
    echo "== $(date -u +%FT%TZ) $*"
    "$PY" "$@"
    echo "== $(date -u +%FT%TZ) exit $? ($1)"
}

# SLR/ADMM with the penalty as a proximal step on LeNet-5 (issue 18: does it beat the loss-term penalty under Adam?)
step retrain_free.py --variants slr/prox admm/prox --continue
# Retrain-free structured pruning on ResNet-20 (issue 18), then the trained BCNNs on the modulation task (issue 19)
step structured_retrain_free.py --models resnet20 --targets 2.0 4.0 --seeds 0 1 2 --continue
step bcnn_accuracy.py --models nin nin-binstem --datasets modulation --seeds 0 1 2 --continue
# Membership inference in the leaking regime, both attackers (issue 22); then the second target
step privacy_mia.py --seeds 0 1 2 --continue
step privacy_mia.py --target resnet20-modulation --seeds 0 1 2 --continue
# Pruning + quantization against its own dense model (issue 20)
step combined_quantization.py --continue
# The rest of the BCNN grid, and VGG-16 (the costliest rows)
step bcnn_accuracy.py --models resnet18 --datasets modulation --seeds 0 1 2 --continue
step bcnn_accuracy.py --models nin resnet18 --datasets fashion-mnist --seeds 0 --continue
step structured_retrain_free.py --models vgg16 --targets 2.0 4.0 --seeds 0 1 2 --continue
