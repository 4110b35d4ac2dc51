import json
import math
import subprocess
import sys

import torch

from dealthdr import create_model
from dealthdr.model.spynet import flow_warp
from dealthdr.profile import EXTRA_FLOP_FORMULAS, count_flops, linear_fit
from dealthdr.testclip import make_clip


def test_ops_torch_counts_as_zero_are_counted():
    from torch.utils.flop_counter import FlopCounterMode
    x, flow = torch.rand(2, 4, 8, 8), torch.zeros(2, 2, 8, 8)
    plain, extra = FlopCounterMode(display=False), FlopCounterMode(
        display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with plain:
        flow_warp(x, flow)
    with extra:
        flow_warp(x, flow)
    assert plain.get_total_flops() == 0
    assert extra.get_total_flops() >= 8 * x.numel()


def test_fused_attention_counts_as_its_unfused_form():
    """Eager FGMA runs torch's fused CPU attention kernel; counted as the matmuls, mask add
    and softmax it replaces, whichever form ran."""
    from torch.utils.flop_counter import FlopCounterMode
    q, k, mask = torch.rand(6, 1, 32, 17), torch.rand(6, 1, 96, 17), torch.rand(32, 96)

    def flops(fn) -> int:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            fn()
        return counter.get_total_flops()

    fused = flops(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, k, attn_mask=mask, scale=1.0))
    unfused = flops(lambda: torch.softmax(q @ k.transpose(-1, -2) + mask, -1) @ k)
    assert fused == unfused > 0


def test_flops_grow_linearly_with_the_tile_ratio():
    model = create_model("tiny").eval()
    frames, exposures, _ = make_clip(64, 64)
    rs, fl = [], []
    for s in (0.5, 5.0, 30.0, math.inf):
        total, comps, stats = count_flops(model, frames, exposures, s)
        rs.append(stats.tile_ratio)
        fl.append(total)
        assert stats.tile_ratio >= stats.attention_ratio  # a tile runs where one position is
        assert comps["encoders"] > 0 and comps["flow (SpyNet)"] > 0 and comps["FGMA"] > 0
    assert len(set(rs)) >= 3
    _, slope, resid = linear_fit(rs, fl)
    assert slope > 0 and resid < 0.02
    zero, _, st0 = count_flops(model, frames, exposures, 0.0)
    assert st0.attention_ratio == 0 and st0.tile_ratio == 0 and zero < min(fl)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dealthdr", *args], capture_output=True,
                          text=True, timeout=300)


def test_profile_cli_writes_records(tmp_path):
    out = tmp_path / "p.json"
    res = _cli("profile", "--variant", "tiny", "--size", "32x48", "--s", "0,15,inf",
               "--repeats", "1", "--warmup", "0", "--json", str(out))
    assert res.returncode == 0, res.stderr
    records = json.loads(out.read_text())
    assert [r["s"] for r in records] == ["0", "15", "inf"]
    keys = {"variant", "size", "s", "attention_ratio", "gmacs", "gflops", "params", "latency_ms"}
    assert all(keys <= r.keys() for r in records)
    assert records[0]["attention_ratio"] == 0 and records[-1]["attention_ratio"] == 1
    assert records[-1]["gflops"] == 2 * records[-1]["gmacs"] or abs(
        records[-1]["gflops"] - 2 * records[-1]["gmacs"]) < 0.01
    assert "GFLOPs(s=inf)/GFLOPs(s=0)" in res.stdout


def test_profile_cli_rejects_bad_arguments(tmp_path):
    assert _cli("profile", "--variant", "huge").returncode == 2
    assert _cli("profile", "--size", "256").returncode == 2
    assert _cli("profile", "--s", "-3").returncode == 2
    res = _cli("profile", "--variant", "tiny", "--checkpoint", str(tmp_path / "none"),
               "--no-latency")
    assert res.returncode == 2 and "not found" in res.stderr
