#!/usr/bin/env bash
# The training benchmarks in the order the open work needs them, each resumable: run this in the background,
# stop it at any time, run it again later and every script picks up where it stopped (--continue keeps the rows
# already in its JSON; trainings resume from their cached checkpoints, and the finished trainings the rows build on
# are committed in benchmarks/checkpoints/ and restored from there on another machine).
#
#   nohup bash benchmarks/run-queue.sh > benchmarks/.cache/queue.log 2>&1 &
#
# Timing benchmarks (bcnn_throughput.py, width_speedup.py, overhead.py) are not here: they need a quiet machine,
# never next to a training run. surgery_speedup.py is, since it times its rows in a process of its own once all
# of them are trained (--retime-only), when nothing else of the queue runs.
#
# A session's machine is fresh and its processes end with it: what survives is what was committed, so the queue
# puts first what finishes in one session, and every row and pin is committed as it lands.
set -u
cd "$(dirname "$0")"
PY=${PYTHON:-python}

step() {
    echo "== $(date -u +%FT%TZ) $*"
    "$PY" "$@"
    echo "== $(date -u +%FT%TZ) exit $? ($1)"
}

# bf16 autocast is emulated on a CPU without AVX-512 BF16 or AMX (a ResNet-20 step 13x slower than float32 on an AMD
# EPYC with AVX2): there the steps whose recipe is bf16 are skipped and the queue spends the machine on the float32 ones
BF16=$("$PY" -c "from prunus.environment import cpu_has_native_bf16 as f; print('no' if f() is False else 'yes')")
bf16() {
    if [ "$BF16" = yes ]; then "$@"; else echo "== $(date -u +%FT%TZ) skipped, a bf16 recipe on a CPU without bf16: $*"; fi
}
# and the float32 steps meant for such a CPU (a recipe of their own, in tables of their own) only run there
fp32_only() {
    if [ "$BF16" = no ]; then "$@"; else echo "== $(date -u +%FT%TZ) skipped, a float32 step for CPUs without bf16: $*"; fi
}

# A script whose JSON holds rows of another dense file (one trained on a machine whose files are gone) refuses
# --continue with status 3: then it starts over on the committed dense model, and later runs continue that.
continue_or_restart() {
    echo "== $(date -u +%FT%TZ) $* --continue"
    "$PY" "$@" --continue
    code=$?
    if [ "$code" -eq 3 ]; then
        echo "== $(date -u +%FT%TZ) rows of another dense file: starting $1 over"
        "$PY" "$@"
        code=$?
    fi
    echo "== $(date -u +%FT%TZ) exit $code ($1)"
}

# Finished tables, kept first so a machine that lost its results finds them again (each is a quick no-op when
# its rows are there): LeNet-5 retrain-free (issue 18) and the LeNet-5 tables of issue 20, on the committed dense file
continue_or_restart structured_retrain_free.py --models resnet20 --targets 4.0 2.0 --seeds 0
continue_or_restart retrain_free.py --variants slr admm magnitude
step retrain_free.py --continue --rates 100 --variants slr/fixed admm/fixed
continue_or_restart combined_quantization.py
continue_or_restart structured_filter.py
continue_or_restart slr_tuning.py
continue_or_restart reweighted_unstructured.py
# The two CNN tables whose dense files were never hashed (issue 20, whose other parts are done): VGG-11 (~2 h) and
# the surgery/latency table (VGG-16 and ResNet-20, ~4 h; its timing pass at the end needs the machine otherwise quiet)
continue_or_restart reweighted_structured.py
# The evidence for prunus prune's retraining lr (a tenth of the pruning lr), on the same VGG-11 (~30 min)
continue_or_restart retrain_lr.py
bf16 continue_or_restart surgery_speedup.py
# Does the BCNN's retraining on cosine-step (the lr decayed per step to 0) close the 'as trained' gap of the
# per-epoch cosine (issue 19)? The converged width-0.5 NIN pruned 20x again (~20 min), before the long runs below
bf16 step bcnn_accuracy.py --models nin --datasets modulation --seeds 0 --converged-only --from-long 20 --continue
# The project's core (issue 18): ResNet-20's 3 seeds are in (42 rows: a no-op where its JSON is committed; ~12 min
# a row on the Xeon, ~20 on an AMD EPYC); VGG-16's seed 0 next (14 rows, ~2 h in bf16)
step structured_retrain_free.py --models resnet20 --targets 4.0 2.0 --seeds 0 1 --continue
# Membership inference's second target (issue 22), its first seed before VGG-16's rows of issue 18: no row of it
# exists yet, and one seed shows whether ResNet-20 on the radio frames leaks as the design needs (~1.5 h a seed on a
# quiet machine: 71 ms a bf16 training step of 64 frames; its printed estimate is measured beside whatever else runs)
bf16 step privacy_mia.py --target resnet20-modulation --seeds 0 --continue
# The second half of the retrain-free structured table (issue 18): VGG-16 width 0.5, 42 rows in bf16 autocast
# (~6 h: bf16 halves a full-precision CNN's step on this CPU, bcnn_training_speed.py)
bf16 step structured_retrain_free.py --models vgg16 --targets 2.0 4.0 --seeds 0 --continue
step structured_retrain_free.py --models resnet20 --targets 4.0 2.0 --seeds 0 1 2 --continue
# The BCNN on Fashion-MNIST (issue 19, no row yet) where bf16 is emulated: its whole recipe in float32 through
# torch.compile, rows in bcnn_accuracy_fp32.json (~10,800 training steps a seed; on an AMD EPYC the first epoch of 469
# steps took 582 s with the compilation, 74.3% test accuracy: ~3-3.5 h a seed)
fp32_only step bcnn_accuracy.py --models nin --datasets fashion-mnist --seeds 0 1 2 --precision fp32 --compile --continue
bf16 step structured_retrain_free.py --models vgg16 --targets 2.0 4.0 --seeds 0 1 2 --continue
# The BCNN on the modulation task (issue 19). Its prunings now retrain on cosine-step (the lr decayed per step to
# 0): --continue runs every pruned row of the per-epoch cosine again, on the cached trainings (seed 0 at width 0.5:
# the 20x row, its 15-epoch retraining, the converged model's 20/8/4/2x curve, ~2 h; the distilled row stays as it
# ran, labelled). Then nin-full: the converged model's 20x again (~1 h), and its 3 seeds at the seed paper's width
# (bcnn, its 20x pruning, the small model from scratch, the fp twin; ~1.5 h a seed through --compile). Each
# nin-full model the engine is timed on also gets its int8-first-layer twin (--int8-stem, ~4 min a row, no training)
bf16 step bcnn_accuracy.py --models nin --datasets modulation --seeds 0 --long-row --long-control --from-long 20 8 4 2 --continue
bf16 step bcnn_accuracy.py --models nin-full --datasets modulation --seeds 0 --converged-only --from-long 20 --compile \
    --int8-stem bcnn-long bcnn-long-20x --continue
bf16 step bcnn_accuracy.py --models nin-full --datasets modulation --seeds 0 1 2 --compile --int8-stem bcnn bcnn-20x \
    --continue
# The NIN with a binary first layer (the engine's faster stem), seed 0: its BCNN is trained and pinned (23.36%,
# against 49.97% with the full-precision stem); its 20x pruning and the small model from scratch are what is left
bf16 step bcnn_accuracy.py --models nin-binstem --datasets modulation --seeds 0 --compile --continue
# Membership inference, the second target (issue 22): ResNet-20 on the radio frames, every training in bf16
# autocast on NHWC tensors but DP-SGD's (~2x faster than float32); the script prints its time estimate as it starts
bf16 step privacy_mia.py --target resnet20-modulation --seeds 0 1 2 --continue
# The LeNet-5 variants that are not targets, and the rest of the BCNN grid
step retrain_free.py --continue --variants gradual slr/prox admm/prox
bf16 step bcnn_accuracy.py --models resnet18 --datasets modulation --seeds 0 1 2 --compile --continue
bf16 step bcnn_accuracy.py --models nin resnet18 --datasets fashion-mnist --seeds 0 --compile --continue
# Width 0.5's diagnostic grid (long retraining, its control, the 20/8/4/2x curve) on seeds 1-2
bf16 step bcnn_accuracy.py --models nin --datasets modulation --seeds 0 1 2 --long-row --long-control --from-long 20 8 4 2 --compile --continue
