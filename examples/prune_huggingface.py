"""Prune a Hugging Face transformers model to 2:4 sparsity (the layout of sparse tensor cores) with SLR.

The model is a small BERT built from a config (no download), trained on a task it can learn in
seconds: does a sequence contain a "keyword" token? ``Plan.uniform`` on a transformer targets
every Linear of the encoder (and the pooler) and skips the embeddings and the classification
head; ``nm:2:4`` keeps 2 of every 4 consecutive input weights of each row.

    python examples/prune_huggingface.py      (needs `pip install transformers`)
    # dense 100.0% -> hard-pruned 2:4 (no retraining) 100.0%; 13 Linear layers, every group of 4 holds <= 2 nonzeros
"""

import torch
from transformers import BertConfig, BertForSequenceClassification

from prunus import SLR, Plan

VOCAB, LENGTH, KEYWORD = 64, 16, 7


def batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences; half of them hold the keyword somewhere (label 1)."""
    tokens = torch.randint(8, VOCAB, (n, LENGTH), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    where = torch.randint(0, LENGTH, (n,), generator=gen)
    tokens[labels == 1, where[labels == 1]] = KEYWORD
    return tokens, labels


def accuracy(model, tokens, labels) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(input_ids=tokens).logits.argmax(1) == labels).float().mean())


def train(model, steps, gen, pruner=None, round_every=10):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        tokens, labels = batch(64, gen)
        loss = model(input_ids=tokens, labels=labels).loss
        if pruner is not None:
            loss = loss + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if pruner is not None and step % round_every == round_every - 1:
            pruner.step(lambda: model(input_ids=fixed[0], labels=fixed[1]).loss.detach())


torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, max_position_embeddings=LENGTH, num_labels=2)
model = BertForSequenceClassification(config)
test = batch(1000, torch.Generator().manual_seed(1))
fixed = batch(256, torch.Generator().manual_seed(2))  # SLR's conditions compare the loss on this batch
train(model, 300, gen)
dense = accuracy(model, *test)

plan = Plan.uniform(model, 0.5, "nm:2:4")  # every encoder Linear; embeddings and classifier untouched
steps = 300
pruner = SLR(model, plan, rounds=steps // 10)
train(model, steps, gen, pruner)
masks = pruner.hard_prune()
hard = accuracy(model, *test)

weights = dict(model.named_parameters())
ok = all(int((weights[n].detach().reshape(-1, 4) != 0).sum(1).max()) <= 2 for n in masks)
print(f"pruned: {', '.join(r.pattern for r in plan.rules[:2])}, ... ({len(plan.rules)} layers)")
print(f"dense {dense:.1f}% -> hard-pruned 2:4 (no retraining) {hard:.1f}%; {len(masks)} Linear layers, "
      f"every group of 4 holds <= 2 nonzeros: {ok}")
