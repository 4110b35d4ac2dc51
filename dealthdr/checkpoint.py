"""Checkpoints: weights as safetensors + the variant config as JSON, side by side.

`name.safetensors` holds tensors only (no pickle, so loading an untrusted file runs no code);
`name.json` holds {"config": ..., "meta": ...}. Both are written to temporary files and renamed,
so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .fileio import atomic_write_bytes
from .model import VARIANTS, DeAltHDR, DeAltHDRConfig

log = logging.getLogger(__name__)


SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
# The variant `--checkpoint default` means when no variant is named: the one every tool, test and
# record was built around, small enough to run on one CPU.
DEFAULT_VARIANT = "tiny"


def shipped_path(variant: str | None = None) -> Path:
    """Where the shipped checkpoint of `variant` (None: DEFAULT_VARIANT) lives."""
    return SHIPPED_DIR / f"dealthdr_{variant or DEFAULT_VARIANT}.safetensors"


def shipped_variants() -> list[str]:
    """Variants with a checkpoint in dealthdr/weights/ (weights and config both present)."""
    return [v for v in VARIANTS
            if shipped_path(v).is_file() and shipped_path(v).with_suffix(".json").is_file()]


def resolve_checkpoint(name: str | Path, variant: str | None = None) -> Path:
    """'default' -> the shipped checkpoint of `variant` (tiny when None); anything else is a
    path, given with or without its suffix: the weights file (.safetensors) is returned, which
    is what digests and labels are taken of."""
    if str(name) == "default":
        path = shipped_path(variant)
        if not path.is_file():
            which = variant or DEFAULT_VARIANT
            raise FileNotFoundError(
                f"no shipped checkpoint of variant {which!r} ({path}); shipped: "
                f"{shipped_variants() or 'none'}. Train one with `dealthdr train` or pass a path")
        return path
    return _paths(name)[0]


def checkpoint_label(name: str | Path) -> str:
    """How records name a checkpoint: 'default' for a shipped one (whatever the path it was
    given by; records keep the variant beside it), else the path as given, so records do not
    carry this machine's folders."""
    try:
        path = Path(name).resolve()
        if any(path == shipped_path(v).resolve() for v in VARIANTS):
            return "default"
    except OSError:
        pass
    return str(name)


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(model: DeAltHDR, path: str | Path, meta: dict | None = None) -> Path:
    """Save weights and config; returns the .safetensors path."""
    from safetensors.torch import save

    weights, config = _paths(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state, metadata={"variant": model.cfg.name}))
    doc = {"config": json.loads(model.cfg.to_json()), "meta": meta or {}}
    atomic_write_bytes(config, json.dumps(doc, indent=2, sort_keys=True).encode())
    log.info("saved checkpoint %s", weights)
    return weights


def read_config(path: str | Path) -> tuple[DeAltHDRConfig, dict]:
    _, config = _paths(path)
    if not config.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {config}")
    try:
        doc = json.loads(config.read_text())
        return DeAltHDRConfig.from_dict(doc["config"]), doc.get("meta", {})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config} is not a dealthdr checkpoint config: {err}") from None


def load_checkpoint(path: str | Path, variant: str | None = None) -> tuple[DeAltHDR, dict]:
    """Build the model a checkpoint describes and load its weights.

    `variant`, when given, must match the checkpoint's (a checkpoint of another variant is an
    error, not a silent rebuild). Returns (model in eval mode, meta).
    """
    from safetensors import SafetensorError, safe_open

    path = resolve_checkpoint(path, variant)
    weights, _ = _paths(path)
    cfg, meta = read_config(path)
    if variant is not None and cfg.name != variant:
        raise ValueError(f"{weights} is a {cfg.name!r} checkpoint, not {variant!r}")
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    try:
        with safe_open(str(weights), "pt") as f:  # the tensors and their record, one open
            stored = (f.metadata() or {}).get("variant")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file: {err}") from None
    if stored is not None and stored != cfg.name:  # written by `save_checkpoint`
        raise ValueError(f"{weights} holds {stored!r} weights, but its config says "
                         f"{cfg.name!r}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise ValueError(f"{weights} holds NaN or Inf weights ({len(broken)} tensors, e.g. "
                         f"{broken[0]}): a diverged run")
    model = DeAltHDR(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{weights} does not match variant {cfg.name!r}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{weights}: shapes differ from variant {cfg.name!r} at {bad[:3]}")
    model.load_state_dict(state)
    return model.eval(), meta


def state_dict_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
