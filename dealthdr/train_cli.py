"""`dealthdr train`: train a variant on synthetic clips; resumes from --out automatically.

Multi-GPU (or multi-process CPU): torchrun --nproc-per-node N -m dealthdr train ...
(--batch is per process; the effective batch is N x --batch).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .model import VARIANTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .train.loop import TrainConfig

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
    p.add_argument("--steps", type=int, default=d.steps, help=f"joint steps (default {d.steps})")
    p.add_argument("--spynet-steps", type=int, default=d.spynet_steps,
                   help="SpyNet pre-training steps on ground-truth flow before joint training "
                        f"(default {d.spynet_steps}; 0 skips)")
    p.add_argument("--batch", type=int, default=d.batch, help=f"per process (default {d.batch})")
    p.add_argument("--patch", type=int, default=d.patch,
                   help=f"square crop size, multiple of 8 (default {d.patch}; paper 192)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW lr (default {d.lr})")
    p.add_argument("--white", type=float, default=d.white,
                   help="the loss clips prediction and ground truth at this radiance (in units "
                        "of the short exposure's white) before the mu-law, as `dealthdr evaluate` "
                        f"does (default {d.white:g}; 0 trains on the raw radiance)")
    p.add_argument("--init", default=d.init,
                   help="fine-tune: start from this checkpoint's weights (a .safetensors path or "
                        "'default'); optimizer and lr schedule start fresh. Must be of --variant")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help=f"save a resumable state every N steps (default {d.ckpt_every})")
    p.add_argument("--vgg-weights", type=Path, default=None,
                   help="local torchvision VGG16 state dict for the perceptual term; without "
                        "it the loss is L1 only (a warning says so)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, data order, modes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .train.loop import TrainConfig, Trainer

    if args.patch % 8 or args.patch < 16:
        raise ValueError(f"--patch must be a multiple of 8 and >= 16, got {args.patch}")
    if args.steps < 0 or args.spynet_steps < 0 or args.batch < 1 or args.ckpt_every < 1:
        raise ValueError("--steps/--spynet-steps must be >= 0, --batch/--ckpt-every >= 1")
    if args.white < 0:
        raise ValueError(f"--white must be >= 0, got {args.white}")
    if args.init:
        from .checkpoint import read_config, resolve_checkpoint
        args.init = str(resolve_checkpoint(args.init))
        init_variant = read_config(args.init)[0].name
        if init_variant != args.variant:  # fail before any data is read
            raise ValueError(f"--init {args.init} is a {init_variant!r} "
                             f"checkpoint, not --variant {args.variant!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    record = Trainer(cfg, args.data, args.out, args.vgg_weights).run()
    print(json.dumps(record.get("final", {})), file=sys.stderr)
    return 0
