"""Sparsity projections: exact counts, idempotence, optimality against brute force, clear errors.

The reference groups below are built with explicit Python loops, independently of the vectorised
reshapes in prunus.constraints.sparsity, so a layout mistake there shows up as a count or optimality failure here.
"""

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunus.constraints.sparsity import group_scores, project, project_global
from prunus.constraints.structures import DEFAULT_PATTERNS, STRUCTURES, Structure, StructureError, num_pruned
from prunus.errors import ConfigError

FAST = settings(max_examples=50, deadline=None)
SLOW = settings(max_examples=25, deadline=None)

# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def make_w(shape, seed, ties, dtype=torch.float32):
    """Random weights; with ``ties`` a few integer levels, so zeros and equal energies are common."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(-2, 3, shape, generator=g).to(dtype)
    return torch.randn(shape, generator=g, dtype=dtype)


def ref_groups(shape, s: Structure):
    """The structure's groups as a (G, *shape) bool tensor, built with plain loops (row-major group order)."""
    shape = tuple(shape)
    masks = []

    def new():
        return torch.zeros(shape, dtype=torch.bool)

    if s.name == "unstructured":
        for idx in itertools.product(*(range(d) for d in shape)):
            g = new()
            g[idx] = True
            masks.append(g)
    elif s.name == "filter":
        for o in range(shape[0]):
            g = new()
            g[o] = True
            masks.append(g)
    elif s.name == "channel":
        for i in range(shape[1]):
            g = new()
            g[:, i] = True
            masks.append(g)
    elif s.name == "column":
        cols = math.prod(shape[1:])
        for c in range(cols):
            g = new()
            g.view(shape[0], cols)[:, c] = True
            masks.append(g)
    elif s.name == "block":
        bh, bw = s.block
        cols = math.prod(shape[1:])
        for bi in range(shape[0] // bh):
            for bj in range(cols // bw):
                g = new()
                g.view(shape[0], cols)[bi * bh:(bi + 1) * bh, bj * bw:(bj + 1) * bw] = True
                masks.append(g)
    elif s.name == "nm":
        kernel = shape[2:]
        for o in range(shape[0]):
            for pos in itertools.product(*(range(d) for d in kernel)):
                for c in range(shape[1] // s.m):
                    g = new()
                    for i in range(c * s.m, (c + 1) * s.m):
                        g[(o, i) + pos] = True
                    masks.append(g)
    elif s.name == "pattern":
        for o in range(shape[0]):
            for i in range(shape[1]):
                g = new()
                g[o, i] = True
                masks.append(g)
    return torch.stack(masks)


def dist(a, b):
    return float((a.double() - b.double()).norm())


def pattern_keep(shape, s: Structure, ratio):
    numel = math.prod(shape)
    return min(math.floor((1 - ratio) * numel / s.pattern_size + 0.5 + 1e-9), shape[0] * shape[1])


def pattern_mask(shape, s: Structure, choice):
    """Mask for one pattern index (or None = kernel pruned) per kernel, in (out, in) order."""
    m = torch.zeros(shape[0] * shape[1], 9, dtype=torch.bool)
    for k, p in enumerate(choice):
        if p is not None:
            m[k, list(s.library[p])] = True
    return m.reshape(shape)


# shapes that fit each structure (small, so hypothesis stays fast)
CONV = st.tuples(st.integers(4, 6), st.sampled_from([4, 8]), st.just(3), st.just(3))
LINEAR = st.just((6, 8))


def ratios(lo=0.0):
    nice = [r for r in (0.0, 0.125, 0.25, 0.5, 0.6, 0.75, 0.875, 0.9) if r >= lo]
    return st.one_of(st.sampled_from(nice), st.floats(lo, 0.999))


@st.composite
def cases(draw, names=STRUCTURES):
    """(w, structure, ratio) with a shape that fits the structure."""
    name = draw(st.sampled_from(names))
    if name == "unstructured":
        s, shape = Structure(name), draw(st.one_of(CONV, LINEAR, st.just((10,))))
    elif name in ("filter", "channel", "column"):
        s, shape = Structure(name), draw(st.one_of(CONV, LINEAR))
    elif name == "block":
        s = Structure("block", block=draw(st.sampled_from([(2, 2), (4, 1), (1, 4), (2, 8), (8, 8)])))
        bh, bw = s.block
        shape = (8, 8) if draw(st.booleans()) else (bh * draw(st.integers(1, 3)), 4, 2, 2)  # conv: 16 columns
    elif name == "nm":
        n, m = draw(st.sampled_from([(2, 4), (1, 4), (1, 2), (2, 8)]))
        s = Structure("nm", n=n, m=m)
        shape = draw(st.one_of(LINEAR, st.tuples(st.integers(2, 5), st.just(8), st.just(3), st.just(3))))
    else:
        s = Structure("pattern") if draw(st.booleans()) else Structure(
            "pattern", patterns=((1, 3, 4, 5, 7), (0, 1, 3, 4, 6), (4, 5, 7, 8, 2))
        )
        shape = draw(CONV)
    if s.fixed_ratio() is not None:
        ratio = s.fixed_ratio()
    else:
        ratio = draw(ratios(s.min_ratio(shape)))
    w = make_w(shape, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()))
    return w, s, ratio


# ------------------------------------------------------------------------------------------------------------------
# num_pruned: the rounding rule
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio,total,expected",
    [(0.5, 3, 2), (0.25, 2, 1), (0.1, 4, 0), (0.125, 4, 1), (0.285, 100, 29), (0.9, 2, 2), (0.0, 10, 0),
     (0.999, 10, 10), (1.0, 7, 7), (0.5, 0, 0), (0.3, 10, 3), (0.35, 10, 4)],
)
def test_num_pruned_rounds_half_up(ratio, total, expected):
    assert num_pruned(ratio, total) == expected


@given(st.integers(0, 10_000), st.integers(1, 10_000))
@FAST
def test_num_pruned_matches_exact_round_half_up(num, total):
    ratio = num / (10_000 + 1)
    exact = Fraction(num, 10_001) * total  # the ratio as intended, in exact arithmetic
    assert num_pruned(ratio, total) == math.floor(exact + Fraction(1, 2))


def test_num_pruned_rejects_nan_and_bad_totals():
    with pytest.raises(StructureError, match="nan"):
        num_pruned(float("nan"), 10)
    with pytest.raises(ValueError, match="total must be a non-negative integer"):
        num_pruned(0.5, -1)


# ------------------------------------------------------------------------------------------------------------------
# properties of every projection
# ------------------------------------------------------------------------------------------------------------------


@given(cases())
@FAST
def test_idempotent(case):
    w, s, ratio = case
    p, mask = project(w, s, ratio)
    p2, mask2 = project(p, s, ratio)
    assert torch.equal(p2, p)
    assert torch.equal(mask2, mask)


@given(cases())
@FAST
def test_counts_and_whole_groups(case):
    w, s, ratio = case
    p, mask = project(w, s, ratio)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(p, torch.where(mask, w, torch.zeros_like(w)))
    groups = ref_groups(w.shape, s)
    sizes = groups.flatten(1).sum(1)
    kept_in_group = (groups & mask).flatten(1).sum(1)
    zeros = int((~mask).sum())
    if s.name == "nm":
        assert bool((kept_in_group == s.n).all())  # exactly n of every m
        assert zeros == w.numel() * (s.m - s.n) // s.m
    elif s.name == "pattern":
        lib = {tuple(p_) for p_ in s.library}
        kernels = mask.reshape(-1, 9)
        alive = kernels.any(1)
        for kern in kernels[alive]:  # each surviving kernel keeps exactly one library pattern
            assert tuple(torch.nonzero(kern).flatten().tolist()) in lib
        k = pattern_keep(w.shape, s, ratio)
        assert int(alive.sum()) == k
        assert zeros == w.numel() - k * s.pattern_size
        # nearest achievable zero count to ratio * numel, so within pattern_size / 2 of it
        target = ratio * w.numel()
        achievable = [w.numel() - j * s.pattern_size for j in range(kernels.shape[0] + 1)]
        assert abs(zeros - target) <= min(abs(a - target) for a in achievable) + 1e-6
        assert abs(zeros - target) <= s.pattern_size / 2 + 1e-6
        assert abs(zeros - num_pruned(ratio, w.numel())) <= (s.pattern_size + 1) // 2
    else:
        # every group is either whole or gone, and exactly num_pruned(ratio, #groups) are gone
        assert bool(((kept_in_group == 0) | (kept_in_group == sizes)).all())
        assert int((kept_in_group == 0).sum()) == num_pruned(ratio, groups.shape[0])
        if s.name == "unstructured":
            assert zeros == num_pruned(ratio, w.numel())
        if s.name == "filter":
            assert Fraction(zeros, w.numel()) == Fraction(num_pruned(ratio, w.shape[0]), w.shape[0])


@given(cases(), st.sampled_from([torch.float64, torch.float32, torch.float16]))
@FAST
def test_input_unchanged_and_dtype_preserved(case, dtype):
    w, s, ratio = case
    w = w.to(dtype).requires_grad_(True)
    before = w.detach().clone()
    p, mask = project(w, s, ratio)
    assert torch.equal(w.detach(), before)
    assert p.dtype == dtype and p.device == w.device and p.shape == w.shape and not p.requires_grad
    assert mask.dtype == torch.bool and mask.device == w.device
    assert p.data_ptr() != w.data_ptr()
    # the same supports as in float64 (integer-valued ties are exact in every dtype)
    if torch.equal(before, before.round()):
        assert torch.equal(project(before.double(), s, ratio)[1], mask)


# ------------------------------------------------------------------------------------------------------------------
# optimality: nothing feasible is closer
# ------------------------------------------------------------------------------------------------------------------


def brute_force_best(w, supports):
    """Smallest distance from w to a point supported inside one of ``supports`` (the best is w masked)."""
    m = torch.stack(list(supports))
    return float((w.double() * ~m).flatten(1).norm(dim=1).min())


def assert_exact_projection(w, p, mask, supports):
    """``p`` is ``w`` on a feasible support (inside one of ``supports``) and no feasible point is closer."""
    supports = list(supports)
    assert torch.equal(p, torch.where(mask, w, torch.zeros_like(w)))
    assert any(not bool((mask & (w != 0) & ~s).any()) for s in supports)  # feasible (zeros may count as kept)
    assert dist(w, p) == pytest.approx(brute_force_best(w, supports), abs=1e-6)


TINY = {  # shapes with <= 8 groups, so all supports can be enumerated
    "unstructured": [(2, 4), (8,)],
    "filter": [(6, 2, 1, 2), (8, 3)],
    "channel": [(3, 7, 1, 1), (2, 5, 2, 2)],
    "column": [(3, 8), (2, 2, 2, 2)],
    "block:2x2": [(4, 4), (4, 8)],
    "block:2x1": [(4, 2, 2, 1)],
}


@given(
    st.sampled_from([(name, shape) for name, shapes in TINY.items() for shape in shapes]),
    ratios(),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
@FAST
def test_group_projection_beats_brute_force(spec_shape, ratio, seed, ties):
    spec, shape = spec_shape
    s = Structure.parse(spec)
    w = make_w(shape, seed, ties)
    p, mask = project(w, s, ratio)
    groups = ref_groups(shape, s)
    keep = groups.shape[0] - num_pruned(ratio, groups.shape[0])
    supports = (groups[list(c)].any(0) if c else torch.zeros(shape, dtype=torch.bool)
                for c in itertools.combinations(range(groups.shape[0]), keep))
    assert_exact_projection(w, p, mask, supports)


@given(st.sampled_from([((2, 8), (2, 4)), ((1, 8, 1, 2), (1, 4)), ((2, 4, 1, 1), (1, 2))]),
       st.integers(0, 2**31 - 1), st.booleans())
@FAST
def test_nm_projection_beats_brute_force(shape_nm, seed, ties):
    shape, (n, m) = shape_nm
    s = Structure("nm", n=n, m=m)
    w = make_w(shape, seed, ties)
    p, mask = project(w, s, s.fixed_ratio())
    groups = ref_groups(shape, s)
    members = [torch.nonzero(g.flatten()).flatten().tolist() for g in groups]
    supports = []
    for choice in itertools.product(*(itertools.combinations(mem, n) for mem in members)):
        sup = torch.zeros(w.numel(), dtype=torch.bool)
        sup[[i for c in choice for i in c]] = True
        supports.append(sup.reshape(shape))
    assert_exact_projection(w, p, mask, supports)


@given(st.sampled_from(["default", "custom"]), ratios(), st.integers(0, 2**31 - 1), st.booleans())
@SLOW
def test_pattern_projection_beats_brute_force(library, ratio, seed, ties):
    if library == "default":  # 2 kernels x (56 patterns or none): 3249 supports
        s, shape = Structure("pattern"), (1, 2, 3, 3)
    else:  # 4 kernels x (3 patterns or none)
        s, shape = Structure("pattern", patterns=((0, 4, 8), (2, 4, 6), (1, 4, 7))), (2, 2, 3, 3)
    ratio = max(ratio, s.min_ratio(shape))
    w = make_w(shape, seed, ties)
    p, mask = project(w, s, ratio)
    k = pattern_keep(shape, s, ratio)
    options = [None] + list(range(len(s.library)))
    supports = (pattern_mask(shape, s, c) for c in itertools.product(options, repeat=shape[0] * shape[1])
                if sum(x is not None for x in c) <= k)
    assert_exact_projection(w, p, mask, supports)


@given(cases(), st.integers(0, 2**31 - 1))
@FAST
def test_random_feasible_points_are_never_closer(case, seed):
    w, s, ratio = case
    p, mask = project(w, s, ratio)
    assert torch.equal(p, torch.where(mask, w, torch.zeros_like(w)))  # w itself on the kept support
    g = torch.Generator().manual_seed(seed)
    groups = ref_groups(w.shape, s)
    if s.name not in ("nm", "pattern"):  # exactly the planned number of whole groups is removed
        assert sum(not bool(mask[gr].any()) for gr in groups) >= num_pruned(ratio, groups.shape[0])
    for _ in range(20):
        if s.name == "nm":
            scores = torch.rand(groups.shape[0], s.m, generator=g)  # a random n of each group of m
            pick = scores.argsort(1)[:, : s.n]
            members = [torch.nonzero(gr.flatten()).flatten() for gr in groups]
            sup = torch.zeros(w.numel(), dtype=torch.bool)
            for mem, pk in zip(members, pick):
                sup[mem[pk]] = True
            sup = sup.reshape(w.shape)
        elif s.name == "pattern":
            kernels = w.shape[0] * w.shape[1]
            alive = torch.randperm(kernels, generator=g)[: pattern_keep(w.shape, s, ratio)].tolist()
            choice = [int(torch.randint(len(s.library), (1,), generator=g)) if k in alive else None
                      for k in range(kernels)]
            sup = pattern_mask(w.shape, s, choice)
        else:
            keep = groups.shape[0] - num_pruned(ratio, groups.shape[0])
            chosen = torch.randperm(groups.shape[0], generator=g)[:keep]
            sup = groups[chosen].any(0) if keep else torch.zeros(w.shape, dtype=torch.bool)
        best_on_sup = torch.where(sup, w, torch.zeros_like(w))
        noisy = best_on_sup + 0.1 * torch.randn(w.shape, generator=g) * sup
        assert dist(w, p) <= dist(w, best_on_sup) + 1e-6
        assert dist(w, p) <= dist(w, noisy) + 1e-6


# ------------------------------------------------------------------------------------------------------------------
# ties, scores, special values
# ------------------------------------------------------------------------------------------------------------------


def test_ties_keep_the_lower_index():
    w = torch.ones(2, 4)
    _, mask = project(w, "unstructured", 0.5)
    assert mask.flatten().tolist() == [True] * 4 + [False] * 4
    _, mask = project(torch.ones(4, 2, 3, 3), "filter", 0.5)
    assert mask[:2].all() and not mask[2:].any()
    _, mask = project(torch.ones(1, 4), "nm:2:4", 0.5)
    assert mask.tolist() == [[True, True, False, False]]
    _, mask = project(torch.ones(1, 2, 3, 3), "pattern", 1 - 4 / 18)  # keep 1 kernel with its first pattern
    assert torch.nonzero(mask[0, 0].flatten()).flatten().tolist() == list(DEFAULT_PATTERNS[0])
    assert not mask[0, 1].any()


def test_group_scores_shapes_and_values():
    w = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    sq = w.square()
    assert torch.allclose(group_scores(w, "filter"), sq.sum((1, 2, 3)))
    assert torch.allclose(group_scores(w, "channel"), sq.sum((0, 2, 3)))
    assert torch.allclose(group_scores(w, "column"), sq.reshape(4, -1).sum(0))
    assert torch.allclose(group_scores(w, "block:2x8"), sq.reshape(2, 2, 9, 8).sum((1, 3)))
    assert torch.equal(group_scores(w, "unstructured"), sq)
    pat = group_scores(w, "pattern")
    assert pat.shape == (4, 8)
    best = torch.stack([sq.reshape(32, 9)[:, list(p)].sum(1) for p in DEFAULT_PATTERNS], 1).max(1).values
    assert torch.allclose(pat.flatten(), best)
    assert group_scores(w.half(), "filter").dtype == torch.float32


def test_nan_weights_stay_visible():
    w = torch.tensor([[0.1, float("nan"), 3.0, 0.2]])
    p, mask = project(w, "unstructured", 0.5)
    assert mask.tolist() == [[False, True, True, False]] and int((~mask).sum()) == 2
    assert torch.isnan(p[0, 1])


def test_ratio_zero_keeps_everything_and_pattern_min_ratio_is_accepted():
    w = torch.randn(4, 4, 3, 3)
    for spec in ("unstructured", "filter", "channel", "column", "block:4x1"):
        p, mask = project(w, spec, 0.0)
        assert mask.all() and torch.equal(p, w)
    _, mask = project(w, "pattern", 5 / 9)
    assert int(mask.sum()) == 4 * 16


def test_fixed_and_min_ratios():
    assert Structure.parse("nm:2:4").fixed_ratio() == 0.5
    assert Structure.parse("1:4").fixed_ratio() == 0.75
    assert Structure.parse("filter").fixed_ratio() is None
    assert Structure.parse("pattern").min_ratio((8, 8, 3, 3)) == pytest.approx(5 / 9)
    assert Structure.parse("pattern:01234").min_ratio((8, 8, 3, 3)) == pytest.approx(4 / 9)
    assert Structure.parse("block:8x8").min_ratio((8, 8)) == 0.0
    assert len(DEFAULT_PATTERNS) == 56 and all(4 in p and len(p) == 4 for p in DEFAULT_PATTERNS)


# ------------------------------------------------------------------------------------------------------------------
# project_global
# ------------------------------------------------------------------------------------------------------------------


@given(st.lists(st.sampled_from([(6, 8), (4, 4, 3, 3), (10,), (3, 5)]), min_size=1, max_size=4),
       ratios(), st.integers(0, 2**31 - 1), st.booleans())
@FAST
def test_project_global_matches_concatenation(shapes, ratio, seed, ties):
    ws = [make_w(sh, seed + i, ties, torch.float64 if i % 2 else torch.float32) for i, sh in enumerate(shapes)]
    before = [w.clone() for w in ws]
    out = project_global(ws, ratio)
    total = sum(w.numel() for w in ws)
    assert sum(int((~m).sum()) for _, m in out) == num_pruned(ratio, total)
    cat = torch.cat([w.double().flatten() for w in ws])
    p_cat, m_cat = project(cat, "unstructured", ratio)
    assert torch.equal(torch.cat([m.flatten() for _, m in out]), m_cat)
    assert torch.equal(torch.cat([p.double().flatten() for p, _ in out]), p_cat)
    for w, b, (p, m) in zip(ws, before, out):
        assert torch.equal(w, b) and p.dtype == w.dtype and m.shape == w.shape


def test_project_global_edge_cases():
    assert project_global([], 0.5) == []
    with pytest.raises(StructureError, match="1.5"):
        project_global([torch.randn(3)], 1.5)


# ------------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,fragments",
    [
        (lambda: project(torch.randn(10), "filter", 0.5), ["filter", "(10,)"]),
        (lambda: project(torch.randn(8, 4, 5, 5), "pattern", 0.7), ["pattern", "(8, 4, 5, 5)", "3x3"]),
        (lambda: project(torch.randn(8, 8), "block:3x3", 0.5), ["block:3x3", "(8, 8)", "multiple of 3"]),
        (lambda: project(torch.randn(8, 6, 3, 3), "nm:2:4", 0.5), ["nm:2:4", "(8, 6, 3, 3)", "6 input channels"]),
        (lambda: project(torch.randn(8, 8), "filter", 1.0), ["ratio 1.0", "(8, 8)", "filter", "[0, 1)"]),
        (lambda: project(torch.randn(8, 8), "filter", -0.1), ["ratio -0.1", "(8, 8)"]),
        (lambda: project(torch.randn(8, 8), "unstructured", float("nan")), ["ratio nan", "(8, 8)"]),
        (lambda: project(torch.randn(8, 8), "filter", "0.5"), ["'0.5'"]),
        (lambda: project(torch.randn(8, 8), "nm:2:4", 0.7), ["0.7", "nm:2:4", "ratio of nm:2:4 is 0.5"]),
        (lambda: project(torch.randn(4, 4, 3, 3), "pattern", 0.5), ["4 of 9", "at least 0.556", "(4, 4, 3, 3)"]),
        (lambda: Structure.parse("banana"), ["'banana'", "nm:N:M"]),
        (lambda: Structure.parse("block:0x4"), ["block"]),
        (lambda: Structure.parse("nm:5:4"), ["n=5", "m=4"]),
        (lambda: Structure.parse({"name": "filter", "ratio": 0.5}), ["ratio"]),
        (lambda: Structure.parse({"block": [4, 1]}), ["name"]),
        (lambda: Structure("filter", block=(8, 8)), ["block", "filter"]),
        (lambda: Structure("pattern", patterns=((0, 1, 4), (0, 4))), ["sizes"]),
        (lambda: Structure("pattern", patterns=((0, 9, 4),)), ["(0, 9, 4)"]),
        (lambda: Structure.parse(3), ["int"]),
    ],
)
def test_structure_errors_name_the_problem(call, fragments):
    with pytest.raises(StructureError) as info:
        call()
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


@pytest.mark.parametrize("spec, fits, misfit, fragment", [
    ("filter", (8, 3), (10,), "at least 2 dimensions"),
    ("block:4x1", torch.Size([8, 4, 3, 3]), (6, 4, 3, 3), "6 rows"),
    ("nm:2:4", (8, 8, 3, 3), (8, 6, 3, 3), "6 input channels"),
    ("pattern", (8, 4, 3, 3), (8, 4, 5, 5), "3x3"),
])
def test_check_accepts_fitting_shapes_and_names_the_misfit(spec, fits, misfit, fragment):
    s = Structure.parse(spec)
    assert s.check(fits) is None
    with pytest.raises(StructureError, match=fragment):
        s.check(misfit)


# ------------------------------------------------------------------------------------------------------------------
# parse / str
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("filter", "filter"), ("  Channel ", "channel"), ("block", "block:4x1"), ("block:8x8", "block:8x8"),
        ("block:4x1", "block:4x1"), ("nm:2:4", "nm:2:4"), ("2:4", "nm:2:4"), ("nm", "nm:2:4"), ("pattern", "pattern"),
        ("pattern:4310,1457", "pattern:0134,1457"), ({"name": "block", "block": [8, 8]}, "block:8x8"),
        ({"name": "block", "block": "2x4"}, "block:2x4"), ({"name": "nm", "n": 1, "m": 4}, "nm:1:4"),
        ({"name": "pattern", "patterns": [[0, 1, 3, 4], [4, 5, 7, 8]]}, "pattern:0134,4578"),
        ({"name": "pattern", "patterns": [list(p) for p in DEFAULT_PATTERNS]}, "pattern"),
    ],
)
def test_parse_and_str(spec, expected):
    s = Structure.parse(spec)
    assert str(s) == expected
    assert Structure.parse(str(s)) == s
    assert Structure.parse(s) is s


@st.composite
def structures(draw):
    name = draw(st.sampled_from(STRUCTURES))
    if name == "block":
        return Structure(name, block=(draw(st.integers(1, 64)), draw(st.integers(1, 64))))
    if name == "nm":
        m = draw(st.integers(1, 32))
        return Structure(name, n=draw(st.integers(1, m)), m=m)
    if name == "pattern" and draw(st.booleans()):
        size = draw(st.integers(1, 9))
        pats = draw(st.lists(st.sets(st.integers(0, 8), min_size=size, max_size=size), min_size=1, max_size=5,
                             unique_by=frozenset))
        return Structure(name, patterns=tuple(tuple(p) for p in pats))
    return Structure(name)


@given(structures())
@FAST
def test_str_round_trips_through_parse(s):
    assert Structure.parse(str(s)) == s


def test_degenerate_shapes_and_views():
    p, mask = project(torch.tensor(3.0), "unstructured", 0.5)  # 0-d: rounds 0.5 up, prunes it
    assert mask.shape == () and not bool(mask) and float(p) == 0.0
    for spec in ("unstructured", "filter", "channel", "column", "block:2x2"):
        for shape in ((0, 4), (4, 0)):
            p, mask = project(torch.zeros(shape), spec, 0.5)
            assert p.shape == mask.shape == shape
    w = torch.randn(4, 8, 3, 3)
    view = w.permute(0, 1, 3, 2)  # non-contiguous input: same answer as its contiguous copy
    for spec, ratio in (("nm:2:4", 0.5), ("pattern", 0.7), ("column", 0.3), ("block:4x4", 0.5)):
        assert torch.equal(project(view, spec, ratio)[1], project(view.contiguous(), spec, ratio)[1])
