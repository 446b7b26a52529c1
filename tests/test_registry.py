"""The method registry: option dataclasses mirror the constructors, and every way in checks them the same."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from helpers import assert_user_error, run_cli

from prunus.cli import build_parser
from prunus.errors import ConfigError
from prunus.methods.registry import METHODS, build_method, method_from_recipe, method_options
from prunus.models import build_model
from prunus.plan.recipe import Plan

RUN_ARGS = {"self", "model", "plan", "update_every", "closure", "rounds"}


@pytest.mark.parametrize("name", list(METHODS))
def test_options_dataclass_mirrors_the_constructor(name):
    spec = METHODS[name]
    fixed = {k for s in METHODS.values() if s.cls is spec.cls for k in s.fixed}  # e.g. Magnitude's gradual=True
    params = {}
    for cls in spec.cls.__mro__:  # a constructor that passes **options on takes its base's keywords too
        signature = inspect.signature(cls.__init__).parameters.values()
        params.update({p.name: p.default for p in signature if p.kind == p.KEYWORD_ONLY and p.name not in params})
        if not any(p.kind == p.VAR_KEYWORD for p in signature):
            break
    params = {k: v for k, v in params.items() if k not in RUN_ARGS | fixed}
    fields = {f.name: f.default for f in dataclasses.fields(spec.options)}
    assert fields == params  # same names, same defaults: a new keyword argument must be declared as an option


def test_every_option_is_a_prune_flag_with_its_methods_in_the_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["prune"]
    flags = {a.dest: a for a in sub._actions}
    for name, spec in METHODS.items():
        for f in dataclasses.fields(spec.options):
            assert name in flags[f.name].help, (f.name, name)
    assert flags["penalize"].choices == ("removed", "all")


def test_build_method_takes_a_dict_or_the_dataclass_and_refuses_other_methods_options():
    model = build_model("lenet5", 1, 10)
    plan = Plan.uniform(model, 0.5)
    a = build_method("slr", model, plan, {"rho": 0.5})
    b = build_method("slr", model, plan, METHODS["slr"].options(rho=0.5))
    assert a.rho == b.rho == 0.5 and a.s == 0.01
    with pytest.raises(ConfigError, match=r"--method slr: option\(s\) lam do not apply \(its options: .*rho"):
        method_options("slr", {"lam": 1.0})
    with pytest.raises(ConfigError, match="unknown method 'sl'"):
        method_options("sl")
    assert build_method("gradual", model, plan, rounds=3).gradual


@pytest.mark.parametrize("section, fragment", [
    ({"rho": 0.1}, "'method' must be a mapping with a 'name'"),
    ({"name": "slr", "lam": 0.1}, "lam do not apply"),
    ({"name": "slr", "rho": "big"}, "rho must be a float, got 'big'"),
    ({"name": "admm", "penalize": "some"}, "penalize must be one of removed, all"),
])
def test_recipe_method_section_errors(section, fragment):
    with pytest.raises(ConfigError, match=fragment):
        method_from_recipe(section, "r.yaml")
    assert method_from_recipe({"name": "slr", "rho": 1}, "r.yaml") == ("slr", {"rho": 1})


def test_prune_cli_reads_the_recipes_method_and_refuses_a_contradicting_flag(capsys, tmp_path, dense_digits):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"prune": {"fc1.weight": {"structure": "unstructured", "ratio": 0.5}},
                                      "method": {"name": "admm", "rho": 0.2}}))
    code, _, err = run_cli(capsys, "prune", "--init", str(dense_digits), "--recipe", str(recipe), "--method", "slr",
                           "--out", str(tmp_path / "x"))
    assert_user_error(code, err, "--method slr contradicts recipe")
    code, _, _ = run_cli(capsys, "prune", "--init", str(dense_digits), "--recipe", str(recipe), "--epochs", "1",
                         "--retrain-epochs", "0", "--tol", "0.01", "--out", str(tmp_path / "run"))
    assert code == 0
    config = yaml.safe_load((tmp_path / "run" / "results.json").read_text())["config"]
    assert config["method"] == "admm" and config["options"] == {"rho": 0.2, "tol": 0.01}
