"""Prune your own model in your own training loop with SLR, then keep the zeros while fine-tuning.

prunus never takes over the loop: ``pruner.penalty()`` is one more loss term, ``pruner.step()``
one round of SLR's own updates, ``pruner.hard_prune()`` the projection onto the sparsity set,
and ``MaskKeeper(...).attach(optimizer)`` keeps pruned weights at exactly zero afterwards.
The data is scikit-learn's bundled digits, so this runs anywhere in seconds.

    python examples/prune_in_your_own_loop.py
    # dense 93.3% -> hard-pruned (no retraining) 92.8% -> after 2 fine-tuning epochs 93.0%;
      90.0% of the weights are zero
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunus import SLR, MaskKeeper, Plan, load_dataset


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2))), 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(data.images).argmax(1) == data.labels).float().mean())


def epoch(model, data, optimizer, pruner=None, batch=64):
    model.train()
    order = torch.randperm(len(data.labels))
    for i in range(0, len(order), batch):
        x, y = data.images[order[i:i + batch]], data.labels[order[i:i + batch]]
        loss = F.cross_entropy(model(x), y)
        if pruner is not None:
            loss = loss + pruner.penalty()  # rho/2 ||W - Z + Lambda/rho||^2 on the entries SLR removes
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if pruner is not None and (i // batch) % 5 == 4:
            pruner.step(closure)  # a round of SLR every 5 batches: Z-step, multiplier update, rho by the budget


torch.manual_seed(0)
train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
model = SmallCNN()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
for _ in range(8):
    epoch(model, train, optimizer)
dense = accuracy(model, test)


def closure():  # the training loss on a fixed batch: SLR's step-size conditions compare it between rounds
    with torch.no_grad():
        return F.cross_entropy(model(train.images[:512]), train.labels[:512])


plan = Plan.uniform(model, 0.9)  # 90% zeros in conv2 and fc1 (the input and output layers stay dense)
epochs, rounds_per_epoch = 5, len(range(0, len(train.labels), 64)) // 5
pruner = SLR(model, plan, rounds=epochs * rounds_per_epoch)  # rounds: how many step() calls the run makes
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(epochs):
    epoch(model, train, optimizer, pruner)
masks = pruner.hard_prune()  # the weights now lie exactly in the sparsity set
hard = accuracy(model, test)

MaskKeeper(model, masks).attach(optimizer)  # pruned weights stay 0.0 through any optimizer
for group in optimizer.param_groups:
    group["lr"] = 2e-4  # fine-tuning: small steps around the hard-pruned weights
for _ in range(2):
    epoch(model, train, optimizer)
final = accuracy(model, test)
zeros = sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
print(f"distance to the set before the hard-prune: {pruner.history[-1]['distance']:.4f}")
print(f"dense {dense:.1f}% -> hard-pruned (no retraining) {hard:.1f}% -> after 2 fine-tuning epochs {final:.1f}%; "
      f"{100 * zeros:.1f}% of the weights are zero")
