import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dealthdr.checkpoint import load_checkpoint
from dealthdr.train.dataset import ParityBatchSampler, WindowDataset
from dealthdr.train.loop import TrainConfig, sample_s
from dealthdr.train.losses import HDRLoss, VGG16Features, mu_law
from tests.clipfactory import write_dataset
from tests.subproc import read_log, run_dealthdr

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--steps", "8", "--spynet-steps", "3", "--batch", "2", "--patch", "32",
        "--ckpt-every", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("clips"), clips=2, frames=8, size=(40, 40))


def _train(clips, out, *extra, wait=True):
    return run_dealthdr("train", "--data", clips, out, ARGS, *extra, wait=wait)


def _log(out):
    return read_log(out)


def test_dataset_windows_and_flow_pairs(clips):
    ds = WindowDataset(clips, patch=24, seed=0)
    assert len(ds) == 2 * 4
    item = ds[0]
    assert item["frames"].shape == (5, 3, 24, 24) and item["hdr"].shape == (3, 24, 24)
    # translation clips: O_{t->t+k} = -k * (2, 1); flips negate dx only
    dx = item["flow_t_n"][:, 0, 0, 0]
    assert torch.allclose(dx.abs(), torch.tensor([4.0, 2.0, 2.0, 4.0]))
    assert torch.allclose(item["flow_n_t"], -item["flow_t_n"])
    ds.set_epoch(0)
    assert torch.equal(ds[3]["frames"], ds[3]["frames"])  # deterministic per (seed, epoch, i)


def test_batches_share_the_centre_exposure_and_shard_across_ranks(clips):
    ds = WindowDataset(clips, patch=24)
    batches = list(ParityBatchSampler(ds, 2, seed=1))
    assert all(len({ds.centre_is_long(i) for i in b}) == 1 for b in batches)
    r0 = list(ParityBatchSampler(ds, 2, seed=1, rank=0, world=2))
    r1 = list(ParityBatchSampler(ds, 2, seed=1, rank=1, world=2))
    assert len(r0) == len(r1) and not {tuple(b) for b in r0} & {tuple(b) for b in r1}


def test_mode_mix_follows_the_paper():
    cfg = TrainConfig()
    s = [sample_s(cfg, i) for i in range(4000)]
    flow, attn = s.count(0.0) / len(s), s.count(math.inf) / len(s)
    fgma = [v for v in s if 0 < v < math.inf]
    assert abs(flow - 0.3) < 0.03 and abs(attn - 0.3) < 0.03
    assert 0 < min(fgma) and max(fgma) < 100
    assert abs(sum(v <= 1 for v in fgma) / len(fgma) - 0.5) < 0.05
    assert s == [sample_s(cfg, i) for i in range(4000)]


def test_vgg16_loads_torchvision_state_dict_and_enables_perceptual_term(tmp_path):
    ref = VGG16Features()
    state = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)   # other keys of a full vgg16 are ignored
    torch.save(state, tmp_path / "vgg16.pth")
    loss = HDRLoss(tmp_path / "vgg16.pth")
    assert loss.perceptual
    assert torch.equal(loss.vgg.features[0].weight, state["features.0.weight"])
    pred, gt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    total, parts = loss(pred, gt)
    assert "vgg" in parts and torch.isclose(total, parts["l1"] + 0.5 * parts["vgg"])
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        HDRLoss(tmp_path / "bad.pth")


def test_loss_without_vgg_is_l1_in_mu_law_and_warns(caplog):
    loss = HDRLoss(None)
    assert "NO VGG16 WEIGHTS" in caplog.text and not loss.perceptual
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    total, _ = loss(a, b)
    assert torch.isclose(total, (mu_law(a) - mu_law(b)).abs().mean())
    assert torch.isclose(mu_law(torch.tensor(1.0)), torch.tensor(1.0))


def test_loss_white_clips_prediction_and_target_like_the_evaluation():
    loss = HDRLoss(None, vgg_weight=0.0, white=1.0)
    total, _ = loss(torch.full((1, 3, 4, 4), 2.0), torch.full((1, 3, 4, 4), 300.0))
    assert total == 0  # both above white: clipped alike, as PSNR-mu at short white sees them
    total, _ = loss(torch.full((1, 3, 4, 4), 0.5), torch.full((1, 3, 4, 4), 300.0))
    assert torch.isclose(total, 1 - mu_law(torch.tensor(0.5)))
    raw, _ = HDRLoss(None, vgg_weight=0.0)(torch.full((1, 3, 4, 4), 0.5),
                                          torch.full((1, 3, 4, 4), 300.0))
    assert raw > total + 0.5  # without the clip the unrecoverable sun dominates


@pytest.mark.e2e   # training runs
def test_resume_after_kill_reproduces_the_uninterrupted_loss_curve(clips, tmp_path):
    res = _train(clips, tmp_path / "a")
    assert res.returncode == 0, res.stderr
    full = _log(tmp_path / "a")
    assert len(full) == 11 and (tmp_path / "a" / "loss_curve.png").stat().st_size > 1000
    proc = _train(clips, tmp_path / "b", wait=False)
    log = tmp_path / "b" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 8):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = _train(clips, tmp_path / "b")
    assert res.returncode == 0, res.stderr
    resumed = _log(tmp_path / "b")
    assert [r["step"] for r in resumed] == list(range(11))
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    model, meta = load_checkpoint(tmp_path / "b" / "final.safetensors", variant="tiny")
    assert meta["steps_done"] == 11 and meta["perceptual"] is False


@pytest.mark.e2e   # a training run
def test_resume_refuses_other_settings(clips, tmp_path):
    assert _train(clips, tmp_path / "r").returncode == 0
    res = _train(clips, tmp_path / "r", "--lr", "1e-3")
    assert res.returncode == 2 and "other settings" in res.stderr
    res = _train(clips, tmp_path / "p", "--patch", "30")
    assert res.returncode == 2 and "multiple of 8" in res.stderr


@pytest.mark.e2e   # training runs
def test_fine_tune_starts_from_init_weights(clips, tmp_path):
    assert _train(clips, tmp_path / "base").returncode == 0
    init = tmp_path / "base" / "final.safetensors"
    res = _train(clips, tmp_path / "ft", "--init", str(init), "--spynet-steps", "0",
                 "--steps", "1", "--lr", "1e-12")
    assert res.returncode == 0, res.stderr
    before, _ = load_checkpoint(init)
    after, meta = load_checkpoint(tmp_path / "ft" / "final.safetensors")
    assert meta["train_config"]["init"] == str(init)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # lr ~0: still the init weights
    res = _train(clips, tmp_path / "bad", "--init", str(init), "--variant", "s")
    assert res.returncode == 2 and "not --variant 's'" in res.stderr


@pytest.mark.e2e   # DDP training run
def test_ddp_two_cpu_processes_gloo(clips, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "dealthdr", "train", "--data", str(clips),
           "--out", str(out), "--steps", "4", "--spynet-steps", "2", "--batch", "1",
           "--patch", "32", "--ckpt-every", "3", "--threads", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["world_size"] == 2 and record["steps_done"] == 6
    assert len(_log(out)) == 6          # rank 0 logs each step once


def _train_flags(*argv):
    import argparse

    from dealthdr.train_cli import add_parser, config_from_args
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    return config_from_args(sub.choices["train"].parse_args(["--data", "d", "--out", "o",
                                                              *argv]))


def test_paper_preset_fills_what_the_flags_leave():
    plain = _train_flags()
    assert plain == TrainConfig()
    paper = _train_flags("--preset", "paper", "--patch", "64", "--steps", "10")
    assert (paper.patch, paper.batch, paper.lr, paper.grad_clip, paper.steps) == \
        (64, 8, 4e-4, 0.0, 10)
    assert _train_flags("--preset", "paper").patch == 192
    assert _train_flags("--grad-clip", "0").grad_clip == 0.0


@pytest.mark.e2e   # a training run
def test_spynet_starts_from_a_local_basicsr_file(clips, tmp_path):
    from safetensors.torch import save_file

    from dealthdr.model import create_model
    own = create_model("tiny").spynet.state_dict()
    state = {}
    for key, value in own.items():  # BasicSR key layout, tiny's widths
        _, i, j, name = key.split(".")
        state[f"basic_module.{i}.basic_module.{j}.{name}"] = torch.randn_like(value) * 0.01
    save_file(state, tmp_path / "spynet.safetensors")
    res = _train(clips, tmp_path / "run", "--spynet-init", str(tmp_path / "spynet.safetensors"),
                 "--spynet-steps", "0", "--steps", "1", "--lr", "1e-12")
    assert res.returncode == 0, res.stderr
    model, meta = load_checkpoint(tmp_path / "run" / "final.safetensors")
    assert meta["train_config"]["spynet_init"].endswith("spynet.safetensors")
    got = model.spynet.state_dict()
    assert torch.allclose(got["levels.2.4.weight"], state["basic_module.2.basic_module.4.weight"],
                          atol=1e-6)
    res = _train(clips, tmp_path / "none", "--spynet-init", str(tmp_path / "missing.pth"))
    assert res.returncode == 2 and "no such file" in res.stderr


def test_mode_mix_flag_sets_the_alignment_shares_and_checks_them(capsys):
    cfg = _train_flags("--mode-mix", "0,1,0")
    assert cfg.mode_mix == (0.0, 1.0, 0.0)
    assert {sample_s(cfg, i) for i in range(200)} == {math.inf}
    flow_only = _train_flags("--mode-mix", "1,0,0")
    assert {sample_s(flow_only, i) for i in range(200)} == {0.0}
    for bad in ("0.5,0.5", "0.5,0.6,0.1", "-0.2,0.6,0.6", "a,b,c"):
        with pytest.raises(SystemExit):
            _train_flags("--mode-mix", bad)
        assert "--mode-mix" in capsys.readouterr().err


def test_resume_compares_settings_by_meaning():
    from dealthdr.checkpoint import shipped_path
    from dealthdr.train.state import changed_settings

    saved = {"init": str(shipped_path()), "steps": 10, "ckpt_every": 5, "lr": 1e-4,
             "variant": "tiny"}
    same = {"init": "default", "steps": 20, "ckpt_every": 50, "lr": 1e-4, "variant": None}
    assert changed_settings(saved, same) == []
    assert changed_settings(saved, {**same, "lr": 2e-4, "variant": "s"}) == ["lr", "variant"]
    assert changed_settings(saved, {**same, "init": "runs/other.safetensors"}) == ["init"]
    assert saved["init"] == str(shipped_path())  # the caller's dicts are left as they were


def test_nan_loss_and_broken_states_are_refused(tmp_path):
    """A NaN or Inf loss stops the run before the weights see it; a state pointer or an
    optimizer state that cannot be read is named, not a traceback."""
    from dealthdr.train.losses import check_finite
    from dealthdr.train.state import latest_step, load_optimizer, save_optimizer

    check_finite(torch.tensor(0.5), 3, "training")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="training loss is .* at step 3"):
            check_finite(torch.tensor(bad), 3, "training")
    (tmp_path / "latest.json").write_text("{broken")
    with pytest.raises(ValueError, match="latest.json is not a resumable state pointer"):
        latest_step(tmp_path)
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param])
    param.grad = torch.ones(3)
    opt.step()
    save_optimizer(opt, tmp_path / "o")
    data = (tmp_path / "o.safetensors").read_bytes()
    (tmp_path / "o.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="optimizer state .* cannot be resumed"):
        load_optimizer(torch.optim.AdamW([param]), tmp_path / "o")


def test_foreign_weight_files_that_are_not_state_dicts_are_named(tmp_path):
    from dealthdr.statedict import read_state_dict

    (tmp_path / "v.pth").write_bytes(b"garbage" * 20)
    (tmp_path / "s.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match=r"v.pth is not a plain tensor state dict \(VGG16"):
        read_state_dict(tmp_path / "v.pth", "VGG16")
    with pytest.raises(ValueError, match="s.safetensors is not a readable safetensors file"):
        read_state_dict(tmp_path / "s.safetensors", "SpyNet")
