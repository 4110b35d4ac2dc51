"""Self-supervised adaptation on unlabelled alternating-exposure footage (paper §3.4, Alg. 1).

One step, for each centre frame t of the batch:
    W      = L_{t-2..t+2}                                   the 5-frame window
    Ĥ_t    = B(W; Θ)                                         (line 5)
    L_A    ∈ G_A = {L_{t±2k}},   k = 1..3   same exposure as L_t       (lines 2, 7)
    L_B    ∈ G_B = {L_{t±(2k-1)}}, k = 1..3  the other exposure         (lines 3, 8)
    H̃_t    = B(S; Θ),  S = {L_t, L_A, L_B}                  (lines 9, 11)
    Θ_ema  ← a Θ_ema + (1 - a) Θ,  a = 0.999                 (line 13, before the teacher runs)
    Ĥ_ema  = B(W; Θ_ema)                                     (line 14)
    L      = λ_time |T(H̃_t) - T(sg(Ĥ_t))|_1 + β |T(Ĥ_t) - T(sg(Ĥ_ema))|_1    (lines 12-16)
with T the μ-law (μ = 5000), λ_time = β = 1, AdamW at lr 1e-6 annealed (cosine) to 1e-7 (§5.1).
`sampling="window"` is the TMRNet-style baseline of Table 6: k = 1 only, i.e. neighbours from
inside the 5-frame window.

Three frames through a 5-frame network. The network's window is fixed at 5 alternating
positions (dual encoders split by exposure, 4 aligned neighbours, one merge weight each). S is
fed as the window (L_A, L_B, L_t, L_B, L_A): every frame sits at a position of its own exposure,
so the alternation holds, and each sampled neighbour appears on both sides of the centre, so
the window carries exactly the information of the 3 frames and no past/future order the
samples do not have. The exposure-aware merge normalises its weights, so a duplicated frame adds
no evidence; the network still fuses only 3 distinct observations, the "information-poor"
reconstruction the paper asks for.

The alignment mode of a step (flow / attention / FGMA with a random s) is drawn as in training
(`sample_s`) unless a fixed s is given, and is the same for the three forwards of the step.
Everything random is a pure function of (seed, step), so a run resumed after a kill replays the
steps an uninterrupted run takes (see dealthdr/train/loop.py).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.sequence import Sequence
from ..fileio import atomic_write_bytes
from ..metrics import MU
from ..model import DeAltHDR
from ..sysinfo import machine_record
from .loop import TrainConfig, cosine_lr, sample_s
from .losses import check_finite
from .plot import plot_loss_curve
from .state import (changed_settings, latest_step, load_extra, load_optimizer, load_state,
                    save_state)

log = logging.getLogger(__name__)
SAMPLINGS = ("motion", "window")


@dataclass(frozen=True)
class AdaptConfig:
    """Hyperparameters of an adaptation run (paper where it says; ours where it is silent)."""
    init: str = "default"           # checkpoint to adapt
    variant: str | None = None      # None: the checkpoint's; with 'default', the shipped one of it
    steps: int = 200
    batch: int = 1
    patch: int = 96                 # random square crop; 0 = whole frames
    lr: float = 1e-6                # paper: 1e-6 -> 1e-7 cosine
    lr_min: float = 1e-7
    weight_decay: float = 1e-4      # as our training; the paper does not say
    grad_clip: float = 1.0          # as our training
    ema_decay: float = 0.999        # a
    beta: float = 1.0               # weight of L_ema
    lambda_time: float = 1.0        # weight of L_time (paper's best, Table J)
    mu: float = MU
    sampling: str = "motion"        # "motion" (t±1..t±6) or "window" (TMRNet-style, t±1, t±2)
    max_k: int = 3                  # k of G_A / G_B: offsets up to 2 * max_k
    s: float = -1.0                 # < 0: training's mode mix per step; else this s
    white: float = 0.0              # > 0: clip at this radiance before T (as train --white)
    flip: bool = True
    ckpt_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_k < 1 or self.batch < 1 or self.steps < 0 or self.ckpt_every < 1:
            raise ValueError("max_k, batch, ckpt_every must be >= 1 and steps >= 0")
        if self.patch and (self.patch < 16 or self.patch % 8):
            raise ValueError(f"patch must be 0 or a multiple of 8 >= 16, got {self.patch}")

    @property
    def offsets(self) -> tuple[list[int], list[int]]:
        """Offsets of G_A (same exposure) and G_B (other exposure) from the centre."""
        k = 1 if self.sampling == "window" else self.max_k
        same = [s * 2 * j for j in range(1, k + 1) for s in (-1, 1)]
        other = [s * (2 * j - 1) for j in range(1, k + 1) for s in (-1, 1)]
        return same, other


def subset_window(t: int, a: int, b: int) -> list[int]:
    """S = {L_t, L_A, L_B} as the network's 5 alternating positions (see the module doc)."""
    return [a, b, t, b, a]


@dataclass(frozen=True)
class Sample:
    t: int
    a: int
    b: int
    y: int
    x: int
    flip: bool


def plan_step(cfg: AdaptConfig, step: int, long: np.ndarray, size: tuple[int, int]
              ) -> list[Sample]:
    """The step's centres, subset frames and crops: a function of (seed, step) only.
    A batch shares the centre's exposure (the dual encoders split the batch by it)."""
    n = len(long)
    rng = np.random.default_rng((cfg.seed, step, 29))
    centres = np.arange(2, n - 2)
    first = int(rng.choice(centres))
    group = centres[long[centres] == long[first]]
    picks = [first] + [int(v) for v in rng.choice(group, cfg.batch - 1)]
    same, other = cfg.offsets
    h, w = size
    ph, pw = (cfg.patch, cfg.patch) if cfg.patch else (h, w)
    out = []
    for t in picks:
        ga = [t + o for o in same if 0 <= t + o < n]
        gb = [t + o for o in other if 0 <= t + o < n]
        a, b = int(rng.choice(ga)), int(rng.choice(gb))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        out.append(Sample(t, a, b, y, x, bool(cfg.flip and rng.random() < 0.5)))
    return out


@torch.no_grad()
def ema_update(teacher: DeAltHDR, student: DeAltHDR, a: float) -> None:
    """Θ_ema ← a Θ_ema + (1 - a) Θ (Algorithm 1, line 13)."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(a).add_(ps.detach(), alpha=1 - a)


class Adapter:
    """Runs Algorithm 1 on the frames of `seq` (in `frames`) into run folder `out`."""

    def __init__(self, cfg: AdaptConfig, seq: Sequence, out: str | Path,
                 frames: range | None = None) -> None:
        self.cfg, self.out = cfg, Path(out)
        frames = range(len(seq)) if frames is None else frames
        if len(frames) < 5:
            raise ValueError(f"{len(frames)} frames: adaptation needs at least one full "
                             "5-frame window")
        size = (seq.height, seq.width)
        if cfg.patch and cfg.patch > min(size):
            raise ValueError(f"--patch {cfg.patch} is larger than the {size[1]}x{size[0]} frames")
        # float16 in memory, as the training dataset keeps clips: random access for the sampler.
        self.frames = np.stack([seq.frame(i) for i in frames]).astype(np.float16)
        self.exposures = seq.exposures[list(frames)].astype(np.float32)
        self.long = seq.long[list(frames)]
        self.source = {k: v for k, v in seq.describe().items() if k not in ("exposures", "long")}
        self.source["frames_used"] = [frames.start, frames.stop]
        self.first = frames.start  # sampled indices are into the frames used
        self.mode_cfg = _loop_cfg(cfg)
        log.info("adapting on %d frames of %s (%.0f MB in memory)", len(frames), seq.path,
                 self.frames.nbytes / 1e6)
        self.ckpt_dir, self.log_path = self.out / "ckpt", self.out / "log.jsonl"
        self.step, self.model, self.teacher, opt_path = self._restore()
        self.model.train()
        self.teacher.eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                     weight_decay=cfg.weight_decay)
        if opt_path is not None:
            load_optimizer(self.opt, opt_path)

    def _restore(self):
        step = latest_step(self.ckpt_dir)
        if step is None:
            student, _ = load_checkpoint(self.cfg.init, self.cfg.variant)
            teacher, _ = load_checkpoint(self.cfg.init, self.cfg.variant)  # Θ_ema = initial Θ
            return 0, student, teacher, None
        model, meta, opt_path, step = load_state(self.ckpt_dir, self.cfg.variant)
        saved = meta.get("adapt_config", {})
        changed = changed_settings(saved, json.loads(json.dumps(asdict(self.cfg))))
        if changed or meta.get("source", {}).get("frames_used") != self.source["frames_used"]:
            raise ValueError(f"{self.out} holds a run with other settings "
                             f"({changed or ['frames']}); use another --out or the same "
                             "settings to resume")
        log.info("resuming from step %d (%s)", step, model.cfg.name)
        return step, model, load_extra(self.ckpt_dir, "ema", model.cfg.name), opt_path

    def _tensors(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(2B, 5, 3, p, p) frames and (2B, 5) exposures: the B windows W, then the B subsets S."""
        p_h = self.cfg.patch or self.frames.shape[1]
        p_w = self.cfg.patch or self.frames.shape[2]
        wins, exps = [], []
        for idx_of in (lambda s: list(range(s.t - 2, s.t + 3)),
                       lambda s: subset_window(s.t, s.a, s.b)):
            for s in samples:
                idx = idx_of(s)
                crop = self.frames[idx, s.y:s.y + p_h, s.x:s.x + p_w]
                if s.flip:
                    crop = crop[:, :, ::-1]
                wins.append(np.ascontiguousarray(crop.transpose(0, 3, 1, 2), dtype=np.float32))
                exps.append(self.exposures[idx])
        return torch.from_numpy(np.stack(wins)), torch.from_numpy(np.stack(exps))

    def tonemap(self, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.white > 0:
            h = h.clamp(max=self.cfg.white) / self.cfg.white
        return torch.log1p(self.cfg.mu * h.clamp_min(0)) / math.log1p(self.cfg.mu)

    def loss(self, step: int, samples: list[Sample]) -> tuple[torch.Tensor, dict]:
        """Algorithm 1 for one batch; updates the EMA teacher first (line 13)."""
        cfg = self.cfg
        s = sample_s(self.mode_cfg, step) if cfg.s < 0 else cfg.s
        frames, exposures = self._tensors(samples)
        b = len(samples)
        ema_update(self.teacher, self.model, cfg.ema_decay)
        out = self.model(frames, exposures, s=s)         # Ĥ_t (first B), H̃_t (last B)
        h_hat, h_tilde = out[:b], out[b:]
        with torch.no_grad():
            h_ema = self.teacher(frames[:b], exposures[:b], s=s)
        l_time = F.l1_loss(self.tonemap(h_tilde), self.tonemap(h_hat.detach()))
        l_ema = F.l1_loss(self.tonemap(h_hat), self.tonemap(h_ema))
        total = cfg.lambda_time * l_time + cfg.beta * l_ema
        return total, {"l_time": float(l_time.detach()), "l_ema": float(l_ema.detach()),
                       "s": s if math.isfinite(s) else "inf"}

    def run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._trim_log()
        start = time.time()
        size = self.frames.shape[1:3]
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), desc="adapt")
        while self.step < cfg.steps:
            step = self.step
            lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.lr_min)
            for group in self.opt.param_groups:
                group["lr"] = lr
            samples = plan_step(cfg, step, self.long, size)
            total, parts = self.loss(step, samples)
            check_finite(total, step, "adaptation")
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            rec = {"step": step, "phase": "adapt", "loss": float(total.detach()), "lr": lr,
                   **parts, "centres": [x.t + self.first for x in samples],
                   "subsets": [[x.a - x.t, x.b - x.t] for x in samples]}
            with self.log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            bar.update(1)
            self.step = step + 1
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                save_state(self.ckpt_dir, self.model, self.opt, self.step, self._meta(),
                           extras={"ema": self.teacher})
                plot_loss_curve(self.log_path, self.out / "loss_curve.png")
        bar.close()
        record = {**self._meta(), "steps_done": self.step, "wall_time_s_this_run":
                  time.time() - start, "machine": machine_record(), "final": self._tail()}
        save_checkpoint(self.model, self.out / "final", meta=record)
        save_checkpoint(self.teacher, self.out / "final_ema", meta={**record, "role": "ema"})
        atomic_write_bytes(self.out / "adapt_record.json", json.dumps(record, indent=2).encode())
        return record

    def _meta(self) -> dict:
        return {"adapt_config": json.loads(json.dumps(asdict(self.cfg))), "source": self.source,
                "algorithm": "DeAltHDR Algorithm 1 (self-supervised adaptation)"}

    def _trim_log(self) -> None:
        """Drop log lines a killed run wrote after its last saved state."""
        if not self.log_path.is_file():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["step"] < self.step]
        atomic_write_bytes(self.log_path, "".join(ln + "\n" for ln in lines).encode())

    def _tail(self, n: int = 50) -> dict:
        recs = [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]
        tail = recs[-n:]
        if not tail:
            return {}
        return {f"{k}_last{len(tail)}": sum(r[k] for r in tail) / len(tail)
                for k in ("loss", "l_time", "l_ema")}


def _loop_cfg(cfg: AdaptConfig):
    """The training config whose `sample_s` draws this run's alignment modes."""
    return TrainConfig(seed=cfg.seed)
