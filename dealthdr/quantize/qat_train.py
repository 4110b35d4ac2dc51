"""Quantization-aware fine-tuning on the exported bucket graphs themselves.

Each (s, centre) bucket is exported at the deployment shape and prepared with
`prepare_qat_pt2e`; every graph then shares one set of parameters (tied after preparation;
`tie="centre"`: one set per centre exposure), so a step on any of them trains the same weights
while each graph keeps its own fake quantizers, and an artifact's methods store one int8 set.
The graphs of one artifact (its two centre exposures) also start from one calibrated range per
activation they have in common (`ranges.share_ranges`), so their identical delegate calls
convert to identical bytes.
Per-centre sets are for float islands that differ by centre: tied across centres, a long graph
training an int8 decoder cost the float-decoder short graphs 0.7-0.9 dB.
Steps go round-robin over the graphs: the flow-only, mixed and attention-only buckets are
trained together, as the paper mixes alignment modes in training, and every graph that will
be converted has seen its own activation ranges.

State (shared parameters, each graph's quantizer buffers, optimizer, step) is saved every
`ckpt_every` steps as safetensors + JSON and resumed from; nothing is unpickled.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import fx

from dealthdr.export.buckets import BucketGraph, example_inputs
from dealthdr.fileio import atomic_write_bytes
from dealthdr.quantize.policy import FloatPolicy
from dealthdr.quantize.quantizers import make_quantizer
from dealthdr.quantize.ranges import (calibrate_ranges, fake_quantizers, share_ranges,
                                      sync_weight_ranges)
from dealthdr.train.loop import cosine_lr
from dealthdr.train.losses import HDRLoss
from dealthdr.train.state import load_optimizer, save_optimizer

log = logging.getLogger(__name__)


@dataclass
class QATConfig:
    steps: int = 100
    lr: float = 1e-5
    lr_min: float = 1e-7
    white: float = 1.0           # the loss clip of the shipped checkpoint's training
    freeze_observers_at: float = 0.75  # fraction of steps after which ranges stop moving
    ckpt_every: int = 25
    seed: int = 0
    # share of the loss (the same mu-law L1) taken against the fp32 model's output instead of
    # the ground truth (self-distillation); quantize/README.md says how to measure it
    distill: float = 1.0
    # "all": one set for every graph, so an artifact stores one int8 weight set; it needs the
    # same float islands in every graph. "centre": short- and long-centre graphs train
    # separate weights (for islands that differ by centre: tied across centres with an int8
    # decoder in the long graphs only, 100 steps moved the float-decoder short graphs
    # 0.7-0.9 dB below their PTQ baseline at 256x256, measured).
    tie: str = "all"


def prepare_graphs(model, buckets, size, backend: str,
                   float_groups: tuple[str, ...] | dict[str, tuple[str, ...]]):
    """{bucket name: prepare_qat_pt2e graph}, {name: FloatPolicy}, exported from a copy of
    `model` (`float_groups`: one set, or one per centre exposure). Exported from a copy of
    `model`: an exported module shares its parameters' storage with the module it came from,
    and QAT must not move the float model the report compares against."""
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    own = copy.deepcopy(model).eval()
    graphs, policies = {}, {}
    for b in buckets:
        gm = torch.export.export(BucketGraph(own, b),
                                 example_inputs(b, size, own.cfg.num_frames),
                                 strict=False).module()
        groups = float_groups[b.centre] if isinstance(float_groups, dict) else float_groups
        policies[b.name] = FloatPolicy(gm, float_groups=groups)
        graphs[b.name] = prepare_qat_pt2e(gm, make_quantizer(backend, policies[b.name],
                                                             qat=True))
    return graphs, policies


def _set_param(gm: fx.GraphModule, name: str, param: torch.nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(owner) if owner else gm, leaf, param)


def tie_parameters(graphs: dict[str, fx.GraphModule],
                   sets: dict[str, str] | None = None) -> dict[str, torch.nn.Parameter]:
    """Make graphs use one parameter per name (a flow-only graph has no attention projections,
    so the set is the union); returns them by name. `sets` ({graph: set name}) ties only graphs
    of the same set, and the names become 'set:name'."""
    shared: dict[str, torch.nn.Parameter] = {}
    for name, gm in graphs.items():
        for pname, p in list(gm.named_parameters()):
            key = pname if sets is None else f"{sets[name]}:{pname}"
            if key in shared:
                if shared[key].shape != p.shape:
                    raise ValueError(f"parameter {pname} differs in shape between graphs")
                _set_param(gm, pname, shared[key])
                continue
            if any(q.data_ptr() == p.data_ptr() for q in shared.values()):
                # graphs exported from one module share its storage: a set of its own needs
                # its own copy (else one tensor twice in the optimizer)
                p = torch.nn.Parameter(p.detach().clone())
                _set_param(gm, pname, p)
            shared[key] = p
    return shared


def quantizer_state(gm: fx.GraphModule, params: set[str]) -> dict[str, torch.Tensor]:
    """The buffers that are not the network's (fake-quantizer scales, ranges, flags)."""
    return {k: v.detach().clone().contiguous() for k, v in gm.state_dict().items()
            if k not in params}


def set_observers(graphs: dict[str, fx.GraphModule], enabled: bool) -> None:
    """Weight ranges follow the weights until the freeze point; activation ranges were set by
    `calibrate_ranges` and stay."""
    for gm in graphs.values():
        for mod in fake_quantizers(gm):
            if getattr(mod, "is_per_channel", False):
                (mod.enable_observer if enabled else mod.disable_observer)()
            else:
                mod.disable_observer()


def save_state(folder: Path, graphs: dict, shared: dict, opt, step: int, losses: list,
               settings: dict | None = None) -> None:
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param/{k}": v.detach().contiguous() for k, v in shared.items()}
    for name, gm in graphs.items():
        for k, v in quantizer_state(gm, set(shared)).items():
            tensors[f"{name}/{k}"] = v
    atomic_write_bytes(folder / f"step_{step:06d}.safetensors", save(tensors))
    save_optimizer(opt, folder / f"step_{step:06d}_optim")
    atomic_write_bytes(folder / "latest.json",
                       json.dumps({"step": step, "losses": losses,
                                   "settings": settings}).encode())
    for old in sorted(folder.glob("step_??????.safetensors"))[:-2]:
        for p in folder.glob(old.stem + "*"):
            p.unlink(missing_ok=True)


def load_state(folder: Path, graphs: dict, shared: dict, opt,
               settings: dict | None = None) -> tuple[int, list]:
    """Resume from `folder`; returns (step, losses), (0, []) when there is nothing to resume."""
    from safetensors.torch import load_file

    pointer = folder / "latest.json"
    if not pointer.exists():
        return 0, []
    doc = json.loads(pointer.read_text())
    saved, this = dict(doc.get("settings") or {}), dict(settings or {})
    if saved.pop("code", None) != this.pop("code", None) and saved == this:
        # Graph node names (and so the observers' ranges) follow the code that traced them:
        # a state of other code can load without an error into the wrong observers.
        log.warning("%s: QAT state saved by other code; training from the start", folder)
        return 0, []
    if doc.get("settings") != settings:
        raise ValueError(f"{folder} holds QAT state of other settings ({doc.get('settings')}); "
                         f"this run has {settings}: delete it or pass another --state")
    step = doc["step"]
    tensors = load_file(str(folder / f"step_{step:06d}.safetensors"))
    other = (f"{folder} holds QAT state of graphs other than this run's (saved by another "
             "version of the network or its export): delete it or pass another --state")
    try:
        with torch.no_grad():
            for k, p in shared.items():
                p.copy_(tensors[f"param/{k}"])
        for name, gm in graphs.items():
            state = {k.split("/", 1)[1]: v for k, v in tensors.items()
                     if k.startswith(name + "/")}
            missing = gm.load_state_dict(state, strict=False).unexpected_keys
            if missing:
                raise ValueError(f"{other}; {name} has no {missing[:3]}")
    except (KeyError, RuntimeError) as err:  # absent tensors, size mismatches
        raise ValueError(f"{other}; {str(err).splitlines()[0][:200]}") from None
    load_optimizer(opt, folder / f"step_{step:06d}_optim")
    log.info("resumed QAT at step %d from %s", step, folder)
    return step, doc["losses"]


def train(graphs: dict[str, fx.GraphModule], centres: dict[str, str], windows: list,
          cfg: QATConfig, state_dir: Path, teachers: dict | None = None,
          settings: dict | None = None, artifacts: dict[str, str] | None = None) -> dict:
    """Fine-tune the tied graphs in place. `windows` are training windows at the graphs'
    shape; a graph trains on windows with its centre exposure. `teachers` ({name: fp32
    callable}) are the distillation targets when `cfg.distill` > 0; `settings` (JSON) is what
    else defines the graphs (backend, float islands, buckets, size, checkpoint): a state saved
    under other settings is refused, not loaded into graphs it does not fit. `artifacts`
    ({graph: artifact}): graphs of one artifact train with one range per activation they have
    in common (`share_ranges`); None keeps a range per graph. Returns a training record."""
    from torchao.quantization.pt2e import move_exported_model_to_train
    from tqdm import tqdm

    settings = json.loads(json.dumps({"config": asdict(cfg), **(settings or {})}))
    names = list(graphs)
    if not 0 <= cfg.distill <= 1:
        raise ValueError(f"distill is a share of the loss in [0, 1], got {cfg.distill}")
    if cfg.distill > 0 and set(teachers or ()) != set(names):
        raise ValueError("distillation needs an fp32 teacher for every graph")
    if cfg.steps < len(names):
        raise ValueError(f"QAT needs at least one step per graph: {cfg.steps} steps for "
                         f"{len(names)} graphs")
    by_centre = {c: [w for w in windows if w.centre == c] for c in set(centres.values())}
    for c, ws in by_centre.items():
        if not ws:
            raise ValueError(f"no training windows with a {c}-exposure centre")
    if cfg.tie not in ("centre", "all"):
        raise ValueError(f"tie must be 'centre' or 'all', got {cfg.tie!r}")
    shared = tie_parameters(graphs, centres if cfg.tie == "centre" else None)
    for gm in graphs.values():
        move_exported_model_to_train(gm)
    opt = torch.optim.Adam(shared.values(), lr=cfg.lr)
    loss_fn = HDRLoss(vgg_weight=0.0, white=cfg.white)
    start, losses = load_state(state_dir, graphs, shared, opt, settings)
    shared_ranges = None
    if start == 0:  # a resumed state carries its calibrated (and shared) ranges
        calibrate_ranges(graphs, centres, windows)
        if artifacts is not None:
            shared_ranges = share_ranges(graphs, artifacts)
            log.info("%d activation ranges shared between the graphs of one artifact",
                     shared_ranges)
    # every graph observes on its first round, whatever the freeze point
    freeze = max(len(names), math.ceil(cfg.freeze_observers_at * cfg.steps))
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="QAT")
    for step in bar:
        if step == freeze:  # tied weights get one range in every graph, then keep it
            sync_weight_ranges(graphs)
        set_observers(graphs, step < freeze)
        name = names[step % len(names)]
        rng = random.Random(cfg.seed * 1_000_003 + step)
        w = rng.choice(by_centre[centres[name]])
        frames, hdr = w.frames, w.hdr
        if rng.random() < 0.5:  # horizontal flip: the flow and attention are symmetric
            frames, hdr = frames.flip(-1), hdr.flip(-1)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.lr_min)
        pred = graphs[name](frames, w.exposures)
        loss = (1 - cfg.distill) * loss_fn(pred, hdr)[0] if cfg.distill < 1 else 0.0
        if cfg.distill > 0:
            with torch.no_grad():
                target = teachers[name](frames, w.exposures)
            loss = loss + cfg.distill * loss_fn(pred, target)[0]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"QAT loss is {loss.item()} at step {step} ({name})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(shared.values(), 1.0)
        opt.step()
        losses.append(round(float(loss), 6))
        bar.set_postfix(loss=f"{loss.item():.4f}", graph=name)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save_state(state_dir, graphs, shared, opt, step + 1, losses, settings)
    if freeze >= cfg.steps:  # no frozen phase: the ranges followed the weights to the end
        sync_weight_ranges(graphs)
    return {"config": asdict(cfg), "graphs": names, "losses": losses,
            "first_loss": losses[0] if losses else None,
            "last_loss_mean10": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "shared_activation_ranges": shared_ranges}
