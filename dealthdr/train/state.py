"""Crash-safe training state: model + optimizer per step, and a `latest.json` pointer written last.

A kill at any moment leaves either the previous complete state or the new one: files of a step
are written (atomically) before the pointer to them, and the pointer is replaced atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fileio import atomic_write_bytes

from ..checkpoint import checkpoint_label, load_checkpoint, save_checkpoint
from ..model import DeAltHDR

# What a resumed run may change: how long it runs and how often it saves.
RESUMABLE_CHANGES = ("steps", "ckpt_every")


def changed_settings(saved: dict, mine: dict) -> list[str]:
    """Settings (JSON-ready dicts of a run config) that differ between a saved run and this one.
    The initial checkpoint is compared by label (the shipped one by any path is 'default'), and
    an unnamed variant (None: whatever the checkpoint is) matches the saved one."""
    saved, mine = dict(saved), dict(mine)
    for cfg in (saved, mine):
        if cfg.get("init"):
            cfg["init"] = checkpoint_label(cfg["init"])
    if "variant" in mine and mine["variant"] is None:
        mine["variant"] = saved.get("variant")
    return sorted(k for k in mine if k in saved and saved[k] != mine[k]
                  and k not in RESUMABLE_CHANGES)


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (hyperparameters, scalars); no pickle."""
    from safetensors.torch import save

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    atomic_write_bytes(path.with_suffix(".safetensors"), save(tensors))
    doc = {"param_groups": sd["param_groups"], "scalars": scalars}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(doc).encode())


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        doc = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path.with_suffix(".safetensors")))
        state: dict[int, dict] = {}
        for key, value in [*tensors.items(), *doc["scalars"].items()]:
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
        # a state cut off mid-write by a crash of another program, or edited by hand
        raise ValueError(f"the optimizer state {path} of the run cannot be resumed ({err}); "
                         f"delete the run folder's ckpt/ to start over") from None


def save_state(folder: Path, model: DeAltHDR, opt: torch.optim.Optimizer, step: int,
               meta: dict, keep: int = 2, extras: dict[str, DeAltHDR] | None = None) -> None:
    """`extras`: further models of the state (e.g. adaptation's EMA teacher), by key."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    save_optimizer(opt, folder / f"{name}_optim")
    save_checkpoint(model, folder / name, meta={**meta, "step": step})
    for key, extra in (extras or {}).items():
        save_checkpoint(extra, folder / f"{name}_{key}", meta={"step": step, "role": key})
    pointer = {"step": step, "model": f"{name}.safetensors", "optim": f"{name}_optim",
               "extras": {key: f"{name}_{key}.safetensors" for key in extras or {}}}
    atomic_write_bytes(folder / "latest.json", json.dumps(pointer).encode())
    steps = sorted(int(p.stem[5:12]) for p in folder.glob("step_???????.json"))
    for old in steps[:-keep]:
        for p in folder.glob(f"step_{old:07d}*"):
            p.unlink(missing_ok=True)


def _pointer(folder: Path) -> dict:
    path = folder / "latest.json"
    try:
        pointer = json.loads(path.read_text())
        int(pointer["step"]), str(pointer["model"]), str(pointer["optim"])
        return pointer
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a resumable state pointer ({err})") from None


def latest_step(folder: Path) -> int | None:
    return _pointer(folder)["step"] if (folder / "latest.json").is_file() else None


def load_state(folder: Path, variant: str) -> tuple[DeAltHDR, dict, Path, int]:
    """The model of the latest state (checked against `variant`), its meta, optimizer path, step."""
    pointer = _pointer(folder)
    model, meta = load_checkpoint(folder / pointer["model"], variant=variant)
    return model, meta, folder / pointer["optim"], pointer["step"]


def load_extra(folder: Path, key: str, variant: str) -> DeAltHDR:
    """The `key` model saved with the latest state (see `save_state`'s extras)."""
    pointer = _pointer(folder)
    if key not in pointer.get("extras", {}):
        raise ValueError(f"{folder}: the latest state has no {key!r} model")
    return load_checkpoint(folder / pointer["extras"][key], variant=variant)[0]
