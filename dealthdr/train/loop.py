"""The training loop: SpyNet pre-training on ground-truth flow, then joint training with the
paper's 30/30/40 flow/attention/FGMA(s) mix. One process or many under `torchrun` (DDP).

Exact resumption: every random choice (batch order, crops, flips, the alignment mode and s of a
step) is a pure function of (seed, step), so a run resumed from its last state replays the same
steps as one that was never interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..fileio import atomic_write_bytes
from ..model import DeAltHDR, create_model, get_config
from ..model.inputs import prepare_inputs
from ..model.spynet import load_basicsr_spynet, resize_flow
from ..sysinfo import machine_record
from .dataset import ParityBatchSampler, WindowDataset
from .losses import HDRLoss, check_finite, flow_epe
from .plot import plot_loss_curve
from .state import changed_settings, latest_step, load_optimizer, load_state, save_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run (paper §5.1 where it says; ours where it is silent)."""
    variant: str = "tiny"
    steps: int = 2000               # joint training steps
    spynet_steps: int = 300         # SpyNet pre-training steps on ground-truth flow (0: skip)
    batch: int = 4                  # per process
    patch: int = 96                 # paper: 192
    lr: float = 4e-4                # paper: 4e-4 -> 1e-7 cosine
    lr_min: float = 1e-7
    spynet_lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0          # not in the paper: keeps early attention-only steps stable
    vgg_weight: float = 0.5         # paper: lambda_vgg = 0.5
    mode_mix: tuple[float, float, float] = (0.3, 0.3, 0.4)  # flow / attention / FGMA(s)
    white: float = 0.0              # >0: loss clips at this radiance, as evaluation does
    init: str = ""                  # fine-tune: start from this checkpoint's weights
    spynet_init: str = ""           # fresh runs: SpyNet from this local BasicSR weight file
    flow_weight: float = 0.01       # ours: EPE to the ground-truth flow joins the joint loss
    ckpt_every: int = 100
    seed: int = 0


# Named starting points for `TrainConfig` (flags given on the command line win over them).
# "paper": §5.1 as written: patch 192, batch 8, AdamW lr 4e-4 -> 1e-7 cosine, no gradient
# clipping; steps are the user's (the paper counts 250 epochs of a dataset we do not have).
PRESETS: dict[str, dict] = {
    "paper": {"patch": 192, "batch": 8, "lr": 4e-4, "lr_min": 1e-7, "grad_clip": 0.0,
              "vgg_weight": 0.5, "mode_mix": (0.3, 0.3, 0.4)},
}


def sample_s(cfg: TrainConfig, step: int) -> float:
    """The step's alignment mode: s=0 (flow), s=inf (attention) or FGMA with a random s, drawn
    like the paper's evaluation grid: half uniform in (0, 1], half uniform in (1, 100)."""
    rng = np.random.default_rng((cfg.seed, step, 11))
    u = rng.random()
    if u < cfg.mode_mix[0]:
        return 0.0
    if u < cfg.mode_mix[0] + cfg.mode_mix[1]:
        return math.inf
    return float(1.0 - rng.random()) if rng.random() < 0.5 else float(rng.uniform(1.0, 100.0))


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _flows(model: DeAltHDR, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """SpyNet's O_{t->n}, O_{n->t} for the 4 neighbours at the batch's resolution."""
    x = prepare_inputs(batch["frames"], batch["exposures"], model.cfg.gamma)
    f_tn, f_nt = model._flows(x[:, :, 3:].clamp(0, 1), x.shape[1] // 2)
    size = batch["frames"].shape[-2:]
    return resize_flow(f_tn, size), resize_flow(f_nt, size)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: str | Path, out: str | Path,
                 vgg_weights: str | Path | None = None) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.rank, self.world, self.device = _distributed()
        # the variant's window, read before _restore builds the model (a checkpoint of another
        # variant is refused, and the model checks the frame count of every batch)
        self.dataset = WindowDataset(data, patch=cfg.patch, seed=cfg.seed,
                                     frames=get_config(cfg.variant).num_frames)
        if (cfg.spynet_steps or cfg.flow_weight) and not self.dataset.has_flow:
            raise ValueError(f"{data}: clips without ground-truth flow; use --spynet-steps 0 "
                             "--flow-weight 0")
        self.sampler = ParityBatchSampler(self.dataset, cfg.batch, cfg.seed, self.rank, self.world)
        self.loss = HDRLoss(vgg_weights, cfg.vgg_weight, cfg.white).to(self.device)
        self.total = cfg.spynet_steps + cfg.steps
        self.ckpt_dir = self.out / "ckpt"
        self.log_path = self.out / "log.jsonl"
        self.step, self.model, opt_path = self._restore()
        self.model.to(self.device).train()
        self.opt = self._optimizer(self.step)
        if opt_path is not None:
            load_optimizer(self.opt, opt_path)

    def _restore(self):
        step = latest_step(self.ckpt_dir)
        if step is None:
            torch.manual_seed(self.cfg.seed)
            if self.cfg.init:  # fine-tuning: weights only; optimizer and schedule start fresh
                model, _ = load_checkpoint(self.cfg.init, self.cfg.variant)
                log.info("initialised from %s", self.cfg.init)
            else:
                model = create_model(self.cfg.variant)
            if self.cfg.spynet_init:  # after --init: the flow network is what the user asked
                load_basicsr_spynet(model.spynet, self.cfg.spynet_init)
            return 0, model, None
        model, meta, opt_path, step = load_state(self.ckpt_dir, self.cfg.variant)
        saved = meta.get("train_config", {})
        changed = changed_settings(saved, json.loads(json.dumps(asdict(self.cfg))))
        if changed:
            raise ValueError(f"{self.out} holds a run with other settings ({changed}); "
                             "use another --out or the same settings to resume")
        log.info("resuming from step %d", step)
        return step, model, opt_path

    def _optimizer(self, step: int) -> torch.optim.Optimizer:
        if step < self.cfg.spynet_steps:
            return torch.optim.Adam(self.model.spynet.parameters(), lr=self.cfg.spynet_lr)
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.999),
                                 weight_decay=self.cfg.weight_decay)

    def _batches(self, start: int):
        """Batches from global step `start` on, phase by phase, epoch by epoch."""
        per_epoch = len(self.sampler._batches())
        step = start
        while step < self.total:
            phase_start = 0 if step < self.cfg.spynet_steps else self.cfg.spynet_steps
            k = step - phase_start
            epoch, skip = divmod(k, per_epoch)
            self.dataset.set_epoch(epoch + (0 if phase_start == 0 else 10_000))
            self.sampler.set_epoch(epoch + (0 if phase_start == 0 else 10_000), skip)
            phase_end = self.cfg.spynet_steps if phase_start == 0 else self.total
            for idx in self.sampler:
                batch = torch.utils.data.default_collate([self.dataset[i] for i in idx])
                yield step, {k: v.to(self.device) for k, v in batch.items()}
                step += 1
                if step >= phase_end:
                    break

    def _sync_grads(self, params) -> None:
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def run(self) -> dict:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._trim_log()
        cfg = self.cfg
        joint = None
        start_time = time.time()
        bar = tqdm(total=self.total, initial=self.step, disable=self.rank != 0, desc="train")
        for step, batch in self._batches(self.step):
            if step < cfg.spynet_steps:
                record = self._spynet_step(step, batch)
            else:
                if joint is None:
                    joint = (DistributedDataParallel(self.model, find_unused_parameters=True)
                             if self.world > 1 else self.model)
                record = self._joint_step(joint, step, batch)
            self.step = step + 1
            if self.step == cfg.spynet_steps:  # phase change: the joint optimizer starts fresh
                self.opt = self._optimizer(self.step)
            if self.rank == 0:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", phase=record["phase"])
            bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == self.total:
                self._checkpoint()
        bar.close()
        return self._finish(time.time() - start_time)

    def _spynet_step(self, step: int, batch: dict) -> dict:
        f_tn, f_nt = _flows(self.model, batch)
        gt_tn, gt_nt = (batch[k].flatten(0, 1) for k in ("flow_t_n", "flow_n_t"))
        loss = flow_epe(f_tn, gt_tn) + flow_epe(f_nt, gt_nt)
        check_finite(loss, step, "training")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(self.model.spynet.parameters())
        self.opt.step()
        epe = float(loss.detach()) / 2
        return {"step": step, "phase": "spynet", "loss": epe, "epe": epe}

    def _joint_step(self, model, step: int, batch: dict) -> dict:
        cfg = self.cfg
        k = step - cfg.spynet_steps
        lr = cosine_lr(k, cfg.steps, cfg.lr, cfg.lr_min)
        for group in self.opt.param_groups:
            group["lr"] = lr
        s = sample_s(cfg, step)
        pred = model(batch["frames"], batch["exposures"], s=s)
        loss, parts = self.loss(pred, batch["hdr"])
        if cfg.flow_weight:
            # Without it SpyNet drifts, under the image loss alone, from optical flow to
            # whatever helps the merge (sub-pixel offsets that blur noise away), and D, the
            # attention mask and the attention windows all lose their meaning.
            size = batch["frames"].shape[-2:]
            f_tn, f_nt = (resize_flow(f, size) for f in self.model.last_flows)
            epe = flow_epe(f_tn, batch["flow_t_n"].flatten(0, 1)) + \
                flow_epe(f_nt, batch["flow_n_t"].flatten(0, 1))
            loss = loss + cfg.flow_weight * epe
            parts = {**parts, "epe": epe.detach() / 2}
        check_finite(loss, step, "training")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        rec = {"step": step, "phase": "joint", "loss": float(loss.detach()),
               "s": s if math.isfinite(s) else "inf", "lr": lr}
        rec.update({k: float(v) for k, v in parts.items()})
        return rec

    def _meta(self) -> dict:
        return {"train_config": json.loads(json.dumps(asdict(self.cfg))),
                "perceptual": self.loss.perceptual}

    def _checkpoint(self) -> None:
        if self.rank == 0:
            save_state(self.ckpt_dir, self.model, self.opt, self.step, self._meta())
            plot_loss_curve(self.log_path, self.out / "loss_curve.png")
        if self.world > 1:
            dist.barrier()

    def _trim_log(self) -> None:
        """Drop log lines a killed run wrote after its last saved state."""
        if self.rank != 0 or not self.log_path.is_file():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["step"] < self.step]
        atomic_write_bytes(self.log_path, "".join(ln + "\n" for ln in lines).encode())

    def _finish(self, wall: float) -> dict:
        record = {**self._meta(), "steps_done": self.step, "wall_time_s_this_run": wall,
                  "world_size": self.world, "machine": machine_record(),
                  "final": self._tail_means()}
        if self.rank == 0:
            save_checkpoint(self.model, self.out / "final", meta=record)
            atomic_write_bytes(self.out / "training_record.json",
                               json.dumps(record, indent=2).encode())
        return record

    def _tail_means(self, n: int = 50) -> dict:
        if not self.log_path.is_file():
            return {}
        recs = [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]
        out = {}
        for phase in ("spynet", "joint"):
            tail = [r["loss"] for r in recs if r["phase"] == phase][-n:]
            if tail:
                out[f"{phase}_loss_last{len(tail)}"] = sum(tail) / len(tail)
        return out
