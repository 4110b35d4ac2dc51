import json
import os

import pytest

from dealthdr import create_model
from dealthdr import checkpoint
from dealthdr.checkpoint import (checkpoint_label, load_checkpoint, resolve_checkpoint,
                                 save_checkpoint, shipped_path, shipped_variants,
                                 state_dict_equal)


def test_round_trip_and_no_temporary_files(tmp_path):
    model = create_model("tiny")
    path = save_checkpoint(model, tmp_path / "ck", meta={"steps": 3})
    assert path.name == "ck.safetensors" and (tmp_path / "ck.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]
    loaded, meta = load_checkpoint(tmp_path / "ck.safetensors", variant="tiny")
    assert meta == {"steps": 3} and state_dict_equal(model, loaded)
    assert not loaded.training


def test_refuses_checkpoint_of_another_variant(tmp_path):
    save_checkpoint(create_model("tiny"), tmp_path / "ck")
    with pytest.raises(ValueError, match="'tiny' checkpoint, not 's'"):
        load_checkpoint(tmp_path / "ck", variant="s")
    # a config edited to claim another variant no longer matches its weights
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["config"]["dim"] = 8
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="shapes differ"):
        load_checkpoint(tmp_path / "ck")


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    save_checkpoint(create_model("tiny"), tmp_path / "ck")
    (tmp_path / "ck.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a dealthdr checkpoint config"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")


def test_records_name_the_shipped_checkpoint_default_and_keep_other_paths_as_given(tmp_path):
    shipped = shipped_path()
    assert checkpoint_label(shipped) == "default"
    assert checkpoint_label(resolve_checkpoint("default")) == "default"
    # the same file reached through a relative path with '..' is still the shipped one
    rel = os.path.relpath(shipped, tmp_path)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert checkpoint_label(rel) == "default"
    finally:
        os.chdir(cwd)
    assert checkpoint_label("runs/mine.safetensors") == "runs/mine.safetensors"
    assert checkpoint_label(tmp_path / "x.safetensors") == str(tmp_path / "x.safetensors")


def test_default_names_the_shipped_checkpoint_of_the_asked_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "SHIPPED_DIR", tmp_path)
    tiny, small = create_model("tiny"), create_model("s")
    save_checkpoint(tiny, tmp_path / "dealthdr_tiny")
    save_checkpoint(small, tmp_path / "dealthdr_s")
    assert shipped_variants() == ["s", "tiny"]
    assert resolve_checkpoint("default") == tmp_path / "dealthdr_tiny.safetensors"
    assert resolve_checkpoint("default", "s") == tmp_path / "dealthdr_s.safetensors"
    loaded, _ = load_checkpoint("default", variant="s")
    assert loaded.cfg.name == "s" and state_dict_equal(loaded, small)
    assert load_checkpoint("default")[0].cfg.name == "tiny"
    # records name every shipped checkpoint 'default' (the variant is kept beside it)
    assert checkpoint_label(tmp_path / "dealthdr_s.safetensors") == "default"
    with pytest.raises(FileNotFoundError, match=r"variant 'default'.*shipped: \['s', 'tiny'\]"):
        resolve_checkpoint("default", "default")


def test_a_checkpoint_named_without_suffix_resolves_to_its_weights_file(tmp_path):
    save_checkpoint(create_model("tiny"), tmp_path / "ck")
    for name in (tmp_path / "ck", str(tmp_path / "ck.json"), tmp_path / "ck.safetensors"):
        assert resolve_checkpoint(name) == tmp_path / "ck.safetensors"


def test_refuses_nan_weights_and_weights_of_another_variant_under_a_config(tmp_path):
    """A diverged run's weights, and weights whose own record names another variant than the
    config beside them (the config alone can be edited to pass the shape checks)."""
    from safetensors.torch import load_file, save_file

    save_checkpoint(create_model("tiny"), tmp_path / "ck")
    weights = tmp_path / "ck.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(weights), metadata={"variant": "tiny"})
    with pytest.raises(ValueError, match="NaN or Inf weights"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(create_model("tiny"), tmp_path / "ck")
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["config"]["name"] = "s"   # same shapes, another name
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="holds 'tiny' weights, but its config says 's'"):
        load_checkpoint(tmp_path / "ck")
    load_checkpoint(shipped_path())   # the shipped weights pass both checks
