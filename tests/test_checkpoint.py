"""Checkpoints: exact round trips, atomic writes, clear errors on damaged files."""

import json

import pytest
import torch
import torch.nn as nn

from prunus.errors import CheckpointError
from prunus.io import flatten_state, load_checkpoint, save_checkpoint, unflatten_state


def _trained_optimizer(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        if kind == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_round_trip_is_exact(tmp_path, kind):
    model, opt = _trained_optimizer(kind)
    state = opt.state_dict()
    tensors = {}
    skeleton = flatten_state(state, "optimizer", tensors)
    json.dumps(skeleton)  # the skeleton must be plain JSON
    _assert_same(unflatten_state(json.loads(json.dumps(skeleton)), tensors), state)

    save_checkpoint(tmp_path / "ck", model.state_dict(), {"optimizer": state}, {"epoch": 3})
    ck = load_checkpoint(tmp_path / "ck")
    _assert_same(ck.state("optimizer"), state)
    _assert_same(ck.model_state, model.state_dict())
    assert ck.meta["epoch"] == 3
    # the restored state drives an optimizer exactly like the original
    _, opt2 = _trained_optimizer(kind)
    opt2.load_state_dict(ck.state("optimizer"))
    _assert_same(opt2.state_dict(), state)


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path):
    w = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(tmp_path / "ck", w, meta={"epoch": 0})
    save_checkpoint(tmp_path / "ck", {"w": w["w"] * 2}, meta={"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta["epoch"] == 1 and torch.equal(ck.model_state["w"], w["w"] * 2)


def test_failed_save_leaves_nothing(tmp_path):
    class NotStorable:
        pass

    with pytest.raises(TypeError, match="cannot store NotStorable"):
        save_checkpoint(tmp_path / "ck", {"w": torch.ones(1)}, {"bad": {"x": NotStorable()}})
    assert list(tmp_path.iterdir()) == []


def test_damaged_checkpoints_give_one_clear_error(tmp_path):
    ck = save_checkpoint(tmp_path / "ck", {"w": torch.ones(100)}, meta={"epoch": 0})
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt"):
        load_checkpoint(ck)

    (ck / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"meta\.json is not valid JSON"):
        load_checkpoint(ck)

    (ck / "meta.json").write_text('{"epoch": 1}')
    with pytest.raises(CheckpointError, match="not a prunus checkpoint"):
        load_checkpoint(ck)

    (ck / "state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: state\.safetensors is missing"):
        load_checkpoint(ck)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_pickle_payload_is_never_executed(tmp_path):
    """A checkpoint whose tensor file is really a pickle is rejected, not run."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ck = save_checkpoint(tmp_path / "ck", {"w": torch.ones(1)})
    (ck / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_dropping_the_optimizer_state_keeps_the_model_file_and_every_other_section(tmp_path):
    """benchmarks/common.pin() keeps finished runs without their optimizer buffers; the model file's hash, recorded
    in the rows pruned from it, must still hold."""
    import hashlib

    from prunus.io import drop_checkpoint_state

    model, opt = _trained_optimizer("sgd")
    rng = {"torch": torch.get_rng_state()}
    save_checkpoint(tmp_path / "ck", model.state_dict(), {"optimizer": opt.state_dict(), "rng": rng},
                    {"epoch": 7, "history": [{"epoch": 7, "test_acc": 12.5}]})
    before = hashlib.sha256((tmp_path / "ck" / "model.safetensors").read_bytes()).hexdigest()
    state_bytes = (tmp_path / "ck" / "state.safetensors").stat().st_size
    drop_checkpoint_state(tmp_path / "ck", "optimizer")

    assert hashlib.sha256((tmp_path / "ck" / "model.safetensors").read_bytes()).hexdigest() == before
    assert (tmp_path / "ck" / "state.safetensors").stat().st_size < state_bytes
    ck = load_checkpoint(tmp_path / "ck")
    assert not ck.has_state("optimizer") and ck.meta["epoch"] == 7 and ck.meta["history"][0]["test_acc"] == 12.5
    _assert_same(ck.state("rng"), rng)
    _assert_same(ck.model_state, model.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directory left beside it
