"""`dealthdr adapt` (Algorithm 1): frame selection, the EMA teacher, losses, exact resume."""
import os
import signal
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from dealthdr.checkpoint import load_checkpoint, resolve_checkpoint, state_dict_equal
from dealthdr.data.sequence import open_sequence
from dealthdr.train.adapt import AdaptConfig, Adapter, ema_update, plan_step, subset_window
from tests.clipfactory import write_translation_clip
from tests.subproc import read_log, run_dealthdr

ARGS = ["--steps", "6", "--patch", "32", "--ckpt-every", "2", "--threads", "1",
        "--lr", "1e-4", "--ema-decay", "0.9"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_translation_clip(tmp_path_factory.mktemp("adapt") / "c", frames=14,
                                  size=(32, 40))


@pytest.mark.parametrize("sampling,max_offset", [("motion", 6), ("window", 2)])
def test_subsets_follow_algorithm_1(sampling, max_offset):
    cfg = AdaptConfig(sampling=sampling, batch=3, patch=16)
    n = 20
    long = np.arange(n) % 2 == 1
    seen = set()
    for step in range(300):
        samples = plan_step(cfg, step, long, (32, 40))
        assert len({bool(long[s.t]) for s in samples}) == 1  # one exposure pattern per batch
        for s in samples:
            assert 2 <= s.t <= n - 3
            da, db = s.a - s.t, s.b - s.t
            assert da % 2 == 0 and db % 2 == 1       # G_A: same exposure, G_B: the other
            assert 0 < abs(da) <= max_offset and abs(db) < max_offset
            assert 0 <= s.a < n and 0 <= s.b < n
            assert 0 <= s.y <= 16 and 0 <= s.x <= 24
            window = long[subset_window(s.t, s.a, s.b)]
            assert (window[1:] != window[:-1]).all()  # S still alternates as a window
            seen.update((da, db))
    assert max(abs(v) for v in seen) == max_offset  # the whole range is drawn
    assert plan_step(cfg, 7, long, (32, 40)) == plan_step(cfg, 7, long, (32, 40))


def test_ema_update_is_the_convex_step():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in a.parameters()]
    ema_update(a, b, 0.75)
    for pa, p0, pb in zip(a.parameters(), before, b.parameters()):
        assert torch.allclose(pa, 0.75 * p0 + 0.25 * pb)


def test_adapt_steps_finite_and_teacher_moves(clip, tmp_path):
    cfg = AdaptConfig(steps=3, patch=32, lr=1e-4, ema_decay=0.9, ckpt_every=3)
    adapter = Adapter(cfg, open_sequence(clip), tmp_path / "run")
    init, _ = load_checkpoint("default")
    record = adapter.run()
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [0, 1, 2]
    assert all(np.isfinite([r["loss"], r["l_time"], r["l_ema"]]).all() for r in log)
    assert log[0]["l_ema"] < 1e-6 < log[2]["l_ema"]  # teacher = student only at the start
    assert log[0]["l_time"] > 0
    teacher = adapter.teacher.state_dict()
    student = adapter.model.state_dict()
    moved = [k for k, v in init.state_dict().items() if not torch.equal(v, teacher[k])]
    assert moved and all(not torch.equal(teacher[k], student[k]) for k in moved)
    # Θ_ema lags Θ: it lies strictly between the initial and the adapted weights
    k = moved[0]
    d_teacher = (teacher[k] - init.state_dict()[k]).norm()
    assert 0 < d_teacher < (student[k] - init.state_dict()[k]).norm()
    final, meta = load_checkpoint(tmp_path / "run" / "final.safetensors")
    assert state_dict_equal(final, adapter.model) and meta["steps_done"] == 3
    assert record["adapt_config"]["sampling"] == "motion"


def _adapt(clip, out, *extra, wait=True):
    return run_dealthdr("adapt", "--input", clip, out, ARGS, *extra, wait=wait)


def _log(out):
    return read_log(out)


@pytest.mark.e2e   # adaptation runs
def test_resume_after_kill_reproduces_the_uninterrupted_run(clip, tmp_path):
    res = _adapt(clip, tmp_path / "a")
    assert res.returncode == 0, res.stderr
    full = _log(tmp_path / "a")
    proc = _adapt(clip, tmp_path / "b", wait=False)
    log = tmp_path / "b" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # after step 2's state, before step 4's
    proc.wait()
    assert 3 <= len(_log(tmp_path / "b")) < 6
    res = _adapt(clip, tmp_path / "b")
    assert res.returncode == 0, res.stderr
    resumed = _log(tmp_path / "b")
    assert [r["step"] for r in resumed] == list(range(6))
    for a, b in zip(full, resumed):
        assert a["subsets"] == b["subsets"] and a["s"] == b["s"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    for name in ("final", "final_ema"):
        ma, _ = load_checkpoint(tmp_path / "a" / f"{name}.safetensors")
        mb, _ = load_checkpoint(tmp_path / "b" / f"{name}.safetensors")
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.allclose(va, vb, atol=1e-6), (name, k)
    same = AdaptConfig(init=str(resolve_checkpoint("default")), steps=6, patch=32, lr=1e-4,
                       ema_decay=0.9, ckpt_every=2)
    assert Adapter(same, open_sequence(clip), tmp_path / "b").step == 6
    with pytest.raises(ValueError, match="other settings"):
        Adapter(replace(same, sampling="window"), open_sequence(clip), tmp_path / "b")


def test_adapt_cli_parses_s_as_a_number_inf_or_mix():
    import argparse

    from dealthdr import adapt_cli

    parser = argparse.ArgumentParser()
    adapt_cli.add_parser(parser.add_subparsers())
    base = ["adapt", "--input", "frames", "--out", "out"]
    assert parser.parse_args(base + ["--s", "15"]).s == 15.0
    assert parser.parse_args(base + ["--s", "inf"]).s == float("inf")
    assert parser.parse_args(base + ["--s", "mix"]).s == -1.0
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--s", "-3"])


def test_adapt_cli_checks_the_variant_before_reading_footage(tmp_path, capsys):
    from dealthdr.cli import main

    missing = tmp_path / "no_such_footage"  # never opened: the variant check comes first
    args = ["adapt", "--input", str(missing), "--out", str(tmp_path / "o")]
    assert main([*args, "--init", str(resolve_checkpoint("default")), "--variant", "s"]) == 2
    assert "is a 'tiny' checkpoint, not --variant 's'" in capsys.readouterr().err
    assert main([*args, "--variant", "default"]) == 2  # no shipped weights of that variant
    assert "no shipped checkpoint of variant 'default'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
