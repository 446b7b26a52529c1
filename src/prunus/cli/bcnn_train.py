"""``prunus bcnn train``, ``prune`` and ``int8-stem``: a BCNN trained, pruned 20x and deployed, end to end.

* ``prunus bcnn train --model nin --dataset modulation --out runs/nin``: the binarized complex model
  (``--fp``: its full-precision twin) with the recipe binary nets want (Adam, cosine, no weight decay,
  no augmentation, channels-last), resumable with ``--resume``.
* ``prunus bcnn prune --init runs/nin --compression 20 --out runs/nin-20x``: SLR (or ADMM) filter
  pruning to 20x fewer *live* weights (:mod:`prunus.jobs.bcnn`), masked retraining, both counts, and
  ``OUT/deployed``: the final model with its BatchNorm statistics re-estimated for inference.
* ``prunus bcnn int8-stem --init runs/nin-20x/deployed --out runs/nin-20x-int8``: the first layer quantized to
  int8 after training (its input scale calibrated on training frames), the engine's faster stem
  (:mod:`prunus.bcnn.int8`); ``prunus bcnn train --int8-stem`` trains with it from the start instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunus.bcnn.models import BCNN_MODELS
from prunus.cli.args import (
    add_data_args,
    check_new_dir,
    add_distill_args,
    add_precision_arg,
    positive_int,
    print_summary,
    resources_of,
)
from prunus.errors import ConfigError
from prunus.jobs.bcnn import (
    BCNN_RETRAIN_SCHEDULE,
    CALIBRATION_FRAMES,
    REESTIMATE_FRAMES,
    prune_bcnn,
    quantize_first_layer,
)
from prunus.jobs.prune import PruneConfig
from prunus.train.config import TrainConfig
from prunus.train.run import train

#: short names accepted by ``--model`` -> registry names
ALIASES = {"nin": "cnin", "resnet18": "cresnet18", "nin_small": "cnin_small", "resnet_small": "cresnet_small"}


def add_train_parsers(bsub) -> None:
    t = bsub.add_parser("train", help="train a BCNN (or with --fp its full-precision complex twin)")
    t.add_argument("--model", default="nin", help="nin, resnet18, nin_small, resnet_small (default nin)")
    t.add_argument("--fp", action="store_true", help="the full-precision complex model (CReLU) instead of the BCNN")
    t.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1)")
    t.add_argument("--binary-stem", action="store_true",
                   help="binarize the first layer too (faster on the engine, far less accurate: see README)")
    t.add_argument("--int8-stem", action="store_true",
                   help="train the first layer with int8 weights and inputs (the engine runs it on 8-bit dot products)")
    t.add_argument("--dataset", default="modulation", help="modulation (default), fashion-mnist, ...")
    t.add_argument("--image-size", type=positive_int, help="zero-pad images to this size (32 for Fashion-MNIST)")
    t.add_argument("--epochs", type=positive_int, default=20)
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (cosine decay)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC convolutions (faster on CPU; default on)")
    add_precision_arg(t)
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    add_data_args(t)

    p = bsub.add_parser("prune", help="SLR/ADMM filter pruning of a trained BCNN to N x fewer live weights")
    p.add_argument("--init", required=True, help="the trained BCNN (checkpoint or run directory)")
    p.add_argument("--compression", type=float, default=20.0, help="live-weight compression (default 20)")
    p.add_argument("--method", choices=("slr", "admm"), default="slr")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs with the method active")
    p.add_argument("--retrain-epochs", type=int, default=2, help="masked retraining epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--retrain-lr", type=float, help="default: --lr")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-every", type=positive_int,
                   help="batches between method rounds (default: 100, fewer when the epochs would make under 12)")
    p.add_argument("--bn-reestimate", type=int, default=REESTIMATE_FRAMES, metavar="FRAMES",
                   help="re-estimate the final model's BatchNorm statistics for inference on FRAMES training frames, "
                   f"saved as OUT/deployed (default {REESTIMATE_FRAMES}; 0: off)")
    add_distill_args(p)
    add_precision_arg(p)
    p.add_argument("--out", required=True, help="run directory to create")
    add_data_args(p)

    q = bsub.add_parser("int8-stem", help="quantize a trained BCNN's first layer to int8 (the engine's faster stem)")
    q.add_argument("--init", required=True, help="the trained BCNN (checkpoint or run directory)")
    q.add_argument("--out", required=True, help="checkpoint directory to write")
    q.add_argument("--frames", type=positive_int, default=CALIBRATION_FRAMES,
                   help=f"training frames the input scale is calibrated on (default {CALIBRATION_FRAMES})")
    q.add_argument("--seed", type=int, default=0, help="which training frames (default 0)")
    add_data_args(q)


def model_name(model: str, fp: bool) -> str:
    name = ALIASES.get(model, model)
    wanted = f"{name}_fp" if fp else name
    if wanted not in BCNN_MODELS:
        raise ConfigError(f"--model {model}{' --fp' if fp else ''} is not a BCNN model; use nin, resnet18, nin_small "
                          "or resnet_small (--fp: nin or resnet18)")
    return wanted


def cmd_train(args: argparse.Namespace) -> int:
    resources = {"data_dir": args.data_dir, "download": args.download, "device": args.device}
    if args.resume:
        flags = (("--out", args.out), ("--compile", args.compile), ("--fp", args.fp),
                 ("--binary-stem", args.binary_stem), ("--int8-stem", args.int8_stem))
        if given := [flag for flag, value in flags if value]:
            raise ConfigError(f"--resume takes its settings from the run; drop {', '.join(given)}")
        trainer = train(TrainConfig(), args.resume, resume=True, **resources)
    else:
        if not args.out:
            raise ConfigError("prunus bcnn train needs --out RUN_DIR (or --resume RUN_DIR)")
        if args.binary_stem and args.fp:
            raise ConfigError("--binary-stem is for the BCNN; drop --fp")
        if args.binary_stem and args.int8_stem:
            raise ConfigError("--binary-stem and --int8-stem are two different first layers; pick one")
        stem = {"fp_first": False} if args.binary_stem else {"int8_first": True} if args.int8_stem else {}
        config = TrainConfig(model=model_name(args.model, args.fp), dataset=args.dataset, epochs=args.epochs,
                             batch_size=args.batch_size, optimizer="adam", lr=args.lr, weight_decay=0.0,
                             schedule="cosine", seed=args.seed, image_size=args.image_size, augment=False,
                             model_options={"width": args.width, **stem},
                             channels_last=args.channels_last,
                             precision=args.precision, compile=args.compile).validate()
        trainer = train(config, args.out, **resources)
    last = trainer.history[-1] if trainer.history else {}
    if last:
        print_summary(f"{trainer.config.model}: test accuracy {last['test_accuracy']:.2f}% after epoch "
                      f"{last['epoch']}; checkpoints in {trainer.run_dir}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    config = PruneConfig(method=args.method, epochs=args.epochs, retrain_epochs=args.retrain_epochs, lr=args.lr,
                         retrain_lr=args.retrain_lr, batch_size=args.batch_size, seed=args.seed,
                         update_every=args.update_every, channels_last=True, precision=args.precision,
                         compile=args.compile,
                         retrain_schedule=BCNN_RETRAIN_SCHEDULE, distill=args.distill,
                         distill_temperature=args.distill_temperature).validate()
    results = prune_bcnn(args.init, args.compression, config, args.out, resources=resources_of(args),
                         reestimate_frames=args.bn_reestimate)
    b = results["bcnn"]
    retrain = ", ".join(f"{a:.2f}%" for a in results["retrain_accuracy"]) or "none"
    deployed = (f" | deployed (BatchNorm re-estimated) {b['bn_reestimated_accuracy']:.2f}% in {args.out}/deployed"
                if "deployed" in b else "")
    print_summary(f"dense {results['dense_accuracy']:.2f}% | hard-pruned {results['hard_pruned_accuracy']:.2f}% | "
                  f"after retraining epochs: {retrain}{deployed} | {b['live_compression']:.1f}x fewer live weights "
                  f"({b['nonzero_compression']:.1f}x by nonzero count), filter ratio {b['ratio']:.3f}")
    return 0


def cmd_int8_stem(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_new_dir(out)  # never the --init checkpoint (not empty) nor anything else already there
    r = quantize_first_layer(args.init, out, frames=args.frames, seed=args.seed, resources=resources_of(args))
    engine = {None: "no engine for a full-precision model", True: "engine equal to PyTorch on every test frame"}[
        r["engine_equal"]]
    print_summary(f"test accuracy {r['accuracy_before']:.2f}% with the float first layer, {r['accuracy']:.2f}% with "
                  f"it int8 (input scale {r['input_scale']:.4g} from {r['frames']} training frames); {engine}; "
                  f"saved {args.out}")
    return 0
