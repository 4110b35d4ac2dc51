"""`dealthdr train`: train a variant on synthetic clips; resumes from --out automatically.

Multi-GPU (or multi-process CPU): torchrun --nproc-per-node N -m dealthdr train ...
(--batch is per process; the effective batch is N x --batch).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from .checkpoint import checkpoint_label, read_config, resolve_checkpoint
from .model import VARIANTS
from .train.loop import PRESETS, TrainConfig, Trainer


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a variant on synthetic clips (resumable, DDP-ready)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(VARIANTS), default=d.variant,
                   help=f"network variant (default: {d.variant})")
    p.add_argument("--data", type=Path, required=True,
                   help="folder of clips written by `dealthdr synth`")
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: ckpt/, log.jsonl, loss_curve.png, final.safetensors, "
                        "training_record.json. An existing run there is resumed")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="start from a named recipe, flags given here override it. paper: "
                        "patch 192, batch 8, lr 4e-4 -> 1e-7 cosine, no gradient clipping "
                        "(paper section 5.1; ~10x the CPU time of the defaults per step)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"joint steps (default {d.steps})")
    p.add_argument("--spynet-steps", type=int, default=d.spynet_steps,
                   help="SpyNet pre-training steps on ground-truth flow before joint training "
                        f"(default {d.spynet_steps}; 0 skips)")
    p.add_argument("--batch", type=int, default=None, help=f"per process (default {d.batch})")
    p.add_argument("--patch", type=int, default=None,
                   help=f"square crop size, multiple of 8 (default {d.patch}; paper 192)")
    p.add_argument("--lr", type=float, default=None, help=f"peak AdamW lr (default {d.lr})")
    p.add_argument("--grad-clip", type=float, default=None,
                   help=f"clip the gradient norm at this value, 0: no clipping (default "
                        f"{d.grad_clip:g}; the paper does not clip: it keeps the early "
                        "attention-only steps of a from-scratch run stable)")
    p.add_argument("--mode-mix", type=_mode_mix, default=None, metavar="FLOW,ATTN,FGMA",
                   help="shares of the joint steps run flow-only (s=0), attention-only (s=inf) "
                        "and as FGMA at a random s (half in (0, 1], half in (1, 100)); they "
                        f"must sum to 1 (default {','.join(f'{v:g}' for v in d.mode_mix)})")
    p.add_argument("--white", type=float, default=d.white,
                   help="the loss clips prediction and ground truth at this radiance (in units "
                        "of the short exposure's white) before the mu-law, as `dealthdr evaluate` "
                        f"does (default {d.white:g}; 0 trains on the raw radiance)")
    p.add_argument("--init", default=d.init,
                   help="fine-tune: start from this checkpoint's weights (a .safetensors path or "
                        "'default'); optimizer and lr schedule start fresh. Must be of --variant")
    p.add_argument("--flow-weight", type=float, default=None,
                   help=f"weight of SpyNet's end-point error to the ground-truth flow in the "
                        f"joint loss (default {d.flow_weight:g}; 0: image loss only, under which "
                        "SpyNet drifts away from optical flow and FGMA's mask loses its meaning)")
    p.add_argument("--spynet-init", default=d.spynet_init, metavar="FILE",
                   help="fresh runs: load SpyNet from a local BasicSR weight file (e.g. "
                        "spynet_sintel_final, .pth or .safetensors; no pickled code runs) "
                        "instead of starting it from scratch; needs a variant with the BasicSR "
                        "SpyNet layout (spynet_width 1.0: default, s)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help=f"save a resumable state every N steps (default {d.ckpt_every})")
    p.add_argument("--vgg-weights", type=Path, default=None,
                   help="local torchvision VGG16 state dict for the perceptual term; without "
                        "it the loss is L1 only (a warning says so)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, data order, modes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.set_defaults(run=run)


def _mode_mix(text: str) -> tuple[float, float, float]:
    try:
        mix = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers FLOW,ATTN,FGMA, got {text!r}") from None
    if len(mix) != 3 or min(mix) < 0 or not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise argparse.ArgumentTypeError(
            f"expected three shares >= 0 that sum to 1, got {text!r}")
    return mix


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    """The flags as a TrainConfig: flags given win, then the preset, then the defaults."""
    names = {f.name for f in fields(TrainConfig)}
    values = dict(PRESETS[args.preset]) if args.preset else {}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.patch % 8 or cfg.patch < 16:
        raise ValueError(f"--patch must be a multiple of 8 and >= 16, got {cfg.patch}")
    if cfg.steps < 0 or cfg.spynet_steps < 0 or cfg.batch < 1 or cfg.ckpt_every < 1:
        raise ValueError("--steps/--spynet-steps must be >= 0, --batch/--ckpt-every >= 1")
    if not all(math.isfinite(v) and v >= 0 for v in (cfg.white, cfg.grad_clip, cfg.flow_weight)):
        raise ValueError("--white, --grad-clip and --flow-weight must be finite and >= 0")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be finite and > 0, got {cfg.lr}")
    if cfg.spynet_init and not Path(cfg.spynet_init).is_file():
        raise ValueError(f"--spynet-init {cfg.spynet_init}: no such file")
    if args.init:
        path = resolve_checkpoint(args.init, cfg.variant)
        init_variant = read_config(path)[0].name
        if init_variant != cfg.variant:  # fail before any data is read
            raise ValueError(f"--init {args.init} is a {init_variant!r} "
                             f"checkpoint, not --variant {cfg.variant!r}")
        cfg = replace(cfg, init=checkpoint_label(path))
    if args.threads:
        torch.set_num_threads(args.threads)
    record = Trainer(cfg, args.data, args.out, args.vgg_weights).run()
    print(json.dumps(record.get("final", {})), file=sys.stderr)
    return 0
