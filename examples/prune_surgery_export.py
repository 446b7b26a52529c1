"""Filter-prune a ResNet, remove the pruned channels physically, export the smaller model to ONNX.

Masks alone make nothing faster. Here SLR drives whole channel sets to zero (each filter with
its BatchNorm and every conv that adds into the same residual stream, found by Torch-Pruning's
dependency graph), the hard-prune zeroes them, ``remove_pruned_channels`` cuts them out (the
outputs are checked equal), and ``export_onnx`` writes the model only if onnxruntime reproduces it.

    python examples/prune_surgery_export.py [OUT_DIR]   (needs the surgery extra: torch-pruning, onnx, onnxruntime)
    # dense 89.1% -> hard-pruned 89.4% -> 97.5% after 1 epoch; parameters 272,186 -> 68,642, MACs 31.0M -> 7.8M
    # (Intel Xeon, 2 threads; the dense model's accuracy varies with the CPU)
"""

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from prunus import SLR, MaskKeeper, Plan, build_model, load_dataset
from prunus.deploy.export import export_onnx
from prunus.deploy.surgery import remove_pruned_channels
from prunus.methods import batch_closure
from prunus.plan.coupling import couple_plan


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(data.images).argmax(1) == data.labels).float().mean())


def epochs(model, data, n, lr, pruner=None, batch=64, sgd=False):
    params = model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9) if sgd else torch.optim.Adam(params, lr=lr)
    keeper = MaskKeeper(model, masks).attach(optimizer) if masks else None
    for _ in range(n):
        model.train()
        order = torch.randperm(len(data.labels))
        for i in range(0, len(order), batch):
            x, y = data.images[order[i:i + batch]], data.labels[order[i:i + batch]]
            loss = F.cross_entropy(model(x), y) + (pruner.penalty() if pruner else 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if pruner is not None and (i // batch) % 5 == 4:
                pruner.step()
    if keeper:
        keeper.remove()


torch.manual_seed(0)
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
example = test.images[:1]
model, masks = build_model("resnet20", in_channels=1, num_classes=10), None
epochs(model, train, 4, 2e-3)
dense = accuracy(model, test)

plan = Plan.uniform(model, 0.5, "filter", skip_first=False, round_to=8)  # half the filters, multiples of 8
plan = couple_plan(model, plan, example)  # channel sets: convs of a residual stream + their BatchNorms
# SGD moves the pruned channels to zero within a few steps once rho is large (Adam moves a weight by at most lr
# per step, too little in this short run); rho_max = 1/lr keeps SGD's steps on the penalty stable
lr = 0.02
closure = batch_closure(model, train.images[:512], train.labels[:512], F.cross_entropy)
pruner = SLR(model, plan, rounds=5 * (len(range(0, len(train.labels), 64)) // 5), rho_max=1 / lr, closure=closure)
# 5 epochs: with 3 the weights ended 0.05 from the set on an Intel Xeon, 12 pt lost at the hard-prune
epochs(model, train, 5, lr, pruner, sgd=True)
print(f"distance to the set before the hard-prune: {pruner.history[-1]['distance']:.4f}")
masks = pruner.hard_prune()
hard = accuracy(model, test)
epochs(model, train, 1, 2e-4)  # one masked fine-tuning epoch
final = accuracy(model, test)

report = remove_pruned_channels(model.eval(), example)  # checks the outputs of the small model equal the masked one
onnx = export_onnx(report.model, example, out / "resnet20-pruned.onnx")
print(f"dense {dense:.1f}% -> hard-pruned {hard:.1f}% -> {final:.1f}% after 1 epoch; parameters "
      f"{report.params_before:,} -> {report.params_after:,}, MACs {report.macs_before / 1e6:.1f}M -> "
      f"{report.macs_after / 1e6:.1f}M; outputs equal to {report.max_abs_diff:.1e}; "
      f"{onnx.path} ({onnx.bytes:,} bytes, onnxruntime max difference {onnx.max_abs_diff:.1e})")
