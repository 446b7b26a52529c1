"""Plans and recipes: resolution, uniform plans, and one clear error per mistake."""

import pytest
import torch
import torch.nn as nn

from prunus.constraints.structures import num_pruned
from prunus.errors import ConfigError
from prunus.models import build_model
from prunus.plan.quant import QuantPlan
from prunus.plan.recipe import Plan, ratio_for_compression
from prunus.plan.search import smallest_on_grid, smallest_ratio


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.conv5 = nn.Conv2d(8, 8, 5)
        self.fc = nn.Linear(8, 4)


def test_recipe_globs_and_regex(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "prune:\n"
        "  conv[12].weight: {structure: filter, ratio: 0.5}\n"
        "  're:fc\\.weight': {structure: 'nm:2:4'}\n"
    )
    plan = Plan.from_yaml(recipe)
    targets = plan.resolve(Tiny())
    assert [(t.name, str(t.structure), t.ratio) for t in targets] == [
        ("conv1.weight", "filter", 0.5),
        ("conv2.weight", "filter", 0.5),
        ("fc.weight", "nm:2:4", 0.5),
    ]


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("prune:\n  conv9.weight: {structure: filter, ratio: 0.5}\n", "'conv9.weight' matches no parameter"),
        ("prune:\n  conv1.weight: {structure: filter, ratio: 1.3}\n", "ratio must be a number in [0, 1)"),
        ("prune:\n  conv1.weight: {structure: filter, ratio: -0.1}\n", "ratio must be a number in [0, 1)"),
        ("prune:\n  conv1.bias: {structure: filter, ratio: 0.5}\n", "conv1.bias"),
        ("prune:\n  conv5.weight: {structure: pattern, ratio: 0.7}\n", "conv5.weight"),
        ("prune:\n  conv1.weight: {structure: banana, ratio: 0.5}\n", "banana"),
        ("prune:\n  conv1.weight: {structure: filter}\n", "'ratio' is missing"),
        ("prune:\n  conv1.weight: {structure: filter, ratio: 0.5, extra: 1}\n", "unknown field(s) extra"),
        (("prune:\n  conv*.weight: {structure: filter, ratio: 0.5}\n"
          "  conv1.weight: {structure: filter, ratio: 0.2}\n"), "matched by both"),
        ("prune:\n  fc.weight: {structure: 'nm:2:4', ratio: 0.7}\n", "always prunes a ratio of 0.5"),
        ("pruen:\n  fc.weight: {ratio: 0.7}\n", "'prune:' section"),
        ("prune: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_recipes_name_the_entry(tmp_path, text, fragment):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as info:
        Plan.from_yaml(recipe).resolve(Tiny())
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert str(recipe) in message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        Plan.from_yaml(tmp_path / "nope.yaml")


def test_uniform_skips_first_and_last_and_unfit_layers():
    model = build_model("lenet5")
    plan = Plan.uniform(model, 0.9)
    assert [t.name for t in plan.resolve(model)] == ["conv2.weight", "fc1.weight", "fc2.weight"]
    everything = Plan.uniform(model, 0.9, skip_first=False, skip_last=False)
    assert len(everything.resolve(model)) == 5
    assert [t.name for t in Plan.uniform(model, 0.9, skip_first=False).resolve(model)][0] == "conv1.weight"
    # pattern only fits 3x3 convolutions: Tiny has exactly one (conv2) once first/last are skipped
    assert [t.name for t in Plan.uniform(Tiny(), 0.8, "pattern").resolve(Tiny())] == ["conv2.weight"]
    with pytest.raises(ConfigError, match="ratio"):
        Plan.uniform(model, 1.0)


class TinyTransformer(nn.Module):
    """Embeddings, one encoder layer (attention projections and MLP), a classification head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        self.head = nn.Linear(16, 3)


def test_uniform_on_a_transformer_skips_embeddings_and_head_not_the_first_linear():
    model = TinyTransformer()
    names = [t.name for t in Plan.uniform(model, 0.5).resolve(model)]
    assert names == ["layer.self_attn.out_proj.weight", "layer.linear1.weight", "layer.linear2.weight"]
    # without the embedding, the first Linear reads the model's input and is skipped as a CNN's first conv is
    del model.embed
    assert [t.name for t in Plan.uniform(model, 0.5).resolve(model)][0] == "layer.linear1.weight"


def test_compression_rate_to_ratio():
    assert ratio_for_compression(20) == pytest.approx(0.95)
    assert ratio_for_compression(1) == 0.0
    with pytest.raises(ConfigError, match="--compression"):
        ratio_for_compression(0.5)


def test_global_needs_uniform_unstructured():
    plan = Plan.from_dict({"global": True, "prune": {"conv1.weight": {"structure": "filter", "ratio": 0.5}}})
    with pytest.raises(ConfigError, match="global"):
        plan.resolve(Tiny())


def test_ratio_that_removes_every_group_is_rejected():
    plan = Plan.from_dict({"prune": {"fc.weight": {"structure": "filter", "ratio": 0.9}}})
    with pytest.raises(ConfigError, match="would remove all 4 filter groups"):
        plan.resolve(Tiny())


def test_round_to_keeps_multiples_of_the_given_count():
    model = build_model("vgg16", in_channels=1, num_classes=10, width=0.25)  # 16, 32, 64 and 128 filters
    plan = Plan.uniform(model, 0.33, "filter", round_to=8, skip_first=False)
    kept = {}
    for t in plan.resolve(model):
        filters = dict(model.named_parameters())[t.name].shape[0]
        kept[filters] = filters - num_pruned(t.ratio, filters)
    assert kept == {16: 8, 32: 24, 64: 40, 128: 88}  # 10.72 -> 8, 21.44 -> 24, 42.88 -> 40, 85.76 -> 88
    with pytest.raises(ConfigError, match="round-to applies to filter and channel"):
        Plan.uniform(model, 0.5, "unstructured", round_to=8)
    with pytest.raises(ConfigError, match="round-to must be"):
        Plan.uniform(model, 0.5, "filter", round_to=0)


def test_layout_is_the_plan_resolved_once_and_projects_through_each_constraint():
    model = build_model("lenet5")
    layout = Plan.uniform(model, 0.9).layout(model)
    assert layout.names == ["conv2.weight", "fc1.weight", "fc2.weight"] and layout.kept_entries_free
    params = dict(model.named_parameters())
    projected = layout.project({n: params[n].detach() for n in layout.names})
    assert {n: int((m == 0).sum()) for n, (_, m) in projected.items()} == {
        "conv2.weight": num_pruned(0.9, 2400), "fc1.weight": num_pruned(0.9, 48000),
        "fc2.weight": num_pruned(0.9, 10080)}
    glob = Plan.uniform(model, 0.9, global_unstructured=True).layout(model)
    assert glob.global_ratio == 0.9
    assert sum(int((m == 0).sum()) for _, m in glob.project({n: params[n].detach() for n in glob.names}).values()) \
        == num_pruned(0.9, 2400 + 48000 + 10080)
    levels = QuantPlan("ternary").layout(model)
    assert not levels.kept_entries_free  # every entry is pinned to a level
    w = params["fc2.weight"].detach()
    q, _ = levels.project({"fc2.weight": w})["fc2.weight"]
    assert len(torch.unique(q)) <= 3


def test_smallest_ratio_searches_find_the_threshold_of_a_monotone_target():
    calls = []

    def reaches(r):
        calls.append(r)
        return r >= 0.3

    found = smallest_ratio(reaches, steps=14)
    assert 0.3 <= found < 0.3 + 0.99 / 2**14 and len(calls) == 15  # one check of the top, then 14 halvings
    grid = [round(0.05 * i, 2) for i in range(20)]
    assert smallest_on_grid(lambda r: r >= 0.42, grid) == 0.45
    with pytest.raises(ValueError, match="out of reach"):
        smallest_ratio(lambda r: False)
    with pytest.raises(ValueError, match="out of reach"):
        smallest_on_grid(lambda r: r > 2, grid)
