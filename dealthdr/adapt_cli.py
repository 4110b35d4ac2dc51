"""`dealthdr adapt`: self-supervised adaptation of a checkpoint to unlabelled real footage
(paper §3.4, Algorithm 1). Resumes from --out automatically.

The 5-frame output Ĥ_t (stop-gradient) supervises the output of a 3-frame subset {L_t, one
same-exposure neighbour from t±2, t±4, t±6, one other-exposure neighbour from t±1, t±3, t±5};
an EMA teacher (a = 0.999) regularises the 5-frame output; both terms are L1 in the μ-law
domain (μ = 5000). --sampling window restricts the neighbours to the 5-frame window (the
TMRNet-style baseline of the paper's Table 6). INPUT takes everything `dealthdr reconstruct`
takes; the frames must carry exposure information. Writes --out/final.safetensors (the adapted
network, for --checkpoint of reconstruct/evaluate), final_ema.safetensors (the teacher),
log.jsonl, loss_curve.png, adapt_record.json and resumable states in ckpt/.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from .checkpoint import checkpoint_label, read_config, resolve_checkpoint
from .cliargs import apply_threads
from .data.sequence import open_sequence
from .model import VARIANTS
from .reconstruct_cli import add_input_args, frame_range
from .sensitivity import parse_s
from .train.adapt import SAMPLINGS, AdaptConfig, Adapter


def _s_or_mix(text: str) -> float:
    if text.strip().lower() == "mix":
        return -1.0
    return parse_s(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = AdaptConfig()
    p = sub.add_parser("adapt", help="self-supervised adaptation to unlabelled footage "
                       "(Algorithm 1; resumable)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="run folder; an existing run there is resumed")
    p.add_argument("--init", default=d.init, metavar="PATH|default",
                   help=f"checkpoint to adapt (default: {d.init}, the shipped one of --variant)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="with --init default: whose shipped checkpoint (default tiny); with a "
                        "path: the variant it must be (default: whatever it is)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch,
                   help=f"centre frames per step (default {d.batch})")
    p.add_argument("--patch", type=int, default=d.patch,
                   help=f"square random crop, multiple of 8; 0 = whole frames "
                        f"(default {d.patch}; the paper trains at 192)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"peak AdamW lr, cosine-annealed to --lr-min (default {d.lr:g}, paper)")
    p.add_argument("--lr-min", type=float, default=d.lr_min,
                   help=f"final lr (default {d.lr_min:g}, paper)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help=f"EMA teacher decay a (default {d.ema_decay})")
    p.add_argument("--beta", type=float, default=d.beta,
                   help=f"weight of L_ema (default {d.beta:g})")
    p.add_argument("--lambda-time", type=float, default=d.lambda_time,
                   help=f"weight of L_time (default {d.lambda_time:g})")
    p.add_argument("--sampling", choices=SAMPLINGS, default=d.sampling,
                   help="motion: neighbours from t±1..t±6 (the paper's); window: from t±1, "
                        f"t±2 only (TMRNet-style) (default {d.sampling})")
    p.add_argument("--s", type=_s_or_mix, default=d.s, metavar="S|mix",
                   help="FGMA sensitivity of every step, or 'mix': training's per-step mix of "
                        "flow (30 %%), attention (30 %%) and FGMA at a random s (default mix)")
    p.add_argument("--white", type=float, default=d.white,
                   help="clip outputs at this radiance before the μ-law, like train --white "
                        f"(default {d.white:g}: Algorithm 1 as written, no clip)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help=f"save a resumable state every N steps (default {d.ckpt_every})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the centres, subsets, crops and modes (default {d.seed})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    if not (all(math.isfinite(v) for v in (args.white, args.lr, args.lr_min))
            and args.white >= 0 and args.lr > 0 and args.lr_min >= 0):
        raise ValueError("--white and --lr-min must be finite and >= 0, --lr finite and > 0")
    path = resolve_checkpoint(args.init, args.variant)
    if not path.is_file():
        raise FileNotFoundError(f"--init checkpoint not found: {args.init}")
    variant = read_config(path)[0].name
    if args.variant and variant != args.variant:  # before any footage is read
        raise ValueError(f"--init {args.init} is a {variant!r} checkpoint, not --variant "
                         f"{args.variant!r}")
    names = {f.name for f in fields(AdaptConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    # the label and the variant together name the weights: 'default' of the checkpoint's variant
    values.update(init=checkpoint_label(path), variant=variant)
    cfg = AdaptConfig(**values)
    seq = open_sequence(args.input, args.exposure_cycle)
    record = Adapter(cfg, seq, args.out, frame_range(args.frames, len(seq))).run()
    final = record.get("final", {})
    print(json.dumps({k: (v if math.isfinite(v) else str(v)) for k, v in final.items()}),
          file=sys.stderr)
    return 0
