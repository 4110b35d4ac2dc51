"""`dealthdr evaluate` end to end on tiny clip folders written here; baselines' exactness."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dealthdr import baselines, metrics
from dealthdr.checkpoint import load_checkpoint, save_checkpoint, shipped_path
from dealthdr.cli import main
from dealthdr.data.clip import read_clip
from dealthdr.data.io import write_exr, write_png16
from dealthdr.evaluate import (_on_flow_grid, baseline_methods, evaluate, model_method,
                               window_gt_flows)
from dealthdr.model import create_model
from tests.conftest import waves

RATIO = 8.0
OFFSETS = (-2, -1, 1, 2)


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth HDR scene (H, W, 3) in short units: dark to mid-grey, plus a highlight that clips
    the long exposure (x 8) but not the short one."""
    img = waves(h, w, seed, count=6, freq=0.35)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.004 + 0.1 * img / img.max()
    spot = np.exp(-((ys - 0.4 * h) ** 2 + (xs - 0.6 * w) ** 2) / (2 * (0.08 * min(h, w)) ** 2))
    return img + 0.6 * spot[..., None]


def render(hdr: np.ndarray, exposure: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma LDR of a linear frame: Poisson-Gaussian-like noise, clipping at 1."""
    lin = hdr * exposure
    lin = lin + noise * np.sqrt(lin + 1e-4) * rng.standard_normal(lin.shape)
    return np.clip(lin, 0, 1) ** (1 / 2.2)


def write_clip(path: Path, frames: int = 7, size: tuple[int, int] = (32, 40),
               shift: tuple[int, int] = (1, 1), noise: float = 0.03, seed: int = 0) -> Path:
    """Frame t = the scene moved by t * shift, so O_{t->t+k} = -k * shift (exact GT flow).
    Even frames are short (the centre of the first window is short)."""
    h, w = size
    dx, dy = shift
    m = 2 * frames + 4
    big = texture(h + 2 * m, w + 2 * m, seed)
    rng = np.random.default_rng(seed)
    exposures = [RATIO if t % 2 else 1.0 for t in range(frames)]
    for t in range(frames):
        hdr = big[m + t * dy:m + t * dy + h, m + t * dx:m + t * dx + w]
        write_png16(path / "ldr" / f"{t:06d}.png", render(hdr, exposures[t], noise, rng))
        write_exr(path / "hdr" / f"{t:06d}.exr", hdr)
        flow = np.full((len(OFFSETS), 2, h, w), np.nan, dtype=np.float16)
        for j, k in enumerate(OFFSETS):
            if 0 <= t + k < frames:
                flow[j, 0], flow[j, 1] = -k * dx, -k * dy
        (path / "flow").mkdir(exist_ok=True)
        np.save(path / "flow" / f"{t:06d}.npy", flow)
    meta = {"format": "dealthdr-clip/1", "frames": frames, "height": h, "width": w,
            "exposures": exposures, "long": [e > 1 for e in exposures], "exposure_ratio": RATIO,
            "gt_units": "linear, short exposure", "flow_offsets": list(OFFSETS), "noise": noise}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    write_clip(data / "clip_a", frames=6, seed=0)
    write_clip(data / "clip_b", frames=7, seed=1, shift=(-1, 0))
    save_checkpoint(create_model("tiny"), root / "ck")
    return root, data, root / "ck"


def test_cli_end_to_end(setup):
    root, data, ck = setup
    out = root / "res.json"
    # One thread: on a busy 2-core machine two OpenMP threads spin-wait each other (15x slower).
    cmd = [sys.executable, "-m", "dealthdr", "evaluate", "--data", str(data), "--checkpoint",
           str(ck), "--variant", "tiny", "--s", "0,inf", "--json", str(out), "--threads", "1",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| method |" in proc.stdout
    doc = json.loads(out.read_text())  # strict JSON: inf is spelled "inf"
    assert out.with_suffix(".md").read_text().startswith("| method |")
    recs = {(r["method"], r["s"]): r for r in doc["records"]}
    # s in one type: text for the network, null for the baselines, which have none
    assert set(recs) == {("dealthdr", "0"), ("dealthdr", "inf"), ("reference", None),
                         ("classical", None)}
    assert doc["format"] == "dealthdr-eval/2"
    assert {r["s"] for r in doc["per_clip"]} == {"0", "inf", None}
    for r in recs.values():
        # 6 and 7 frames -> centres 2, 3 and 2, 3, 4; 1 + 2 consecutive pairs.
        assert (r["frames"], r["pairs"], r["clips"]) == (5, 3, 2)
        assert 0 < r["ssim_mu"] <= 1 and math.isfinite(r["psnr_mu"])
        assert r["twe"] is not None and r["twe"] >= 0 and r["tof"] >= 0
        assert (r["fvvdp"] is None) == (metrics.fvvdp_unavailable() is not None)
        # hard region: the borders the 1-2 px motion leaves through (no occlusion, no fast
        # motion in these clips)
        assert 0 < r["hard_share"] < 0.3 and math.isfinite(r["psnr_mu_hard"])
    assert len(doc["per_clip"]) == 8 and doc["variant"] == "tiny"
    # what FGMA attended: nothing at s=0, every position and tile at s=inf, nothing to say
    # for a baseline
    for s, ratio in (("0", 0.0), ("inf", 1.0)):
        assert recs[("dealthdr", s)]["attention_ratio"] == ratio
        assert recs[("dealthdr", s)]["tile_ratio"] == ratio
    assert recs[("classical", None)]["attention_ratio"] is None
    # The noisy short centre frames are what merging is for.
    assert recs[("classical", None)]["psnr_mu"] > recs[("reference", None)]["psnr_mu"] + 1


def test_baselines_only_and_max_clips(setup, capsys):
    _, data, _ = setup
    assert main(["evaluate", "--data", str(data), "--baselines", "reference", "--no-fvvdp",
                 "--max-clips", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| reference | - |" in text and "disabled" in text


@pytest.mark.parametrize("args, message", [
    (["--data", "{root}/nowhere"], "data directory not found"),
    (["--data", "{empty}", "--baselines", "reference"], "no dealthdr clips"),
    (["--data", "{data}", "--checkpoint", "{root}/missing"], "not found"),
    (["--data", "{data}", "--checkpoint", "{ck}", "--variant", "s"], "'tiny' checkpoint"),
    (["--data", "{data}", "--variant", "tiny"], "pass --checkpoint"),
    (["--data", "{data}", "--gt-flow", "--baselines", "reference"], "pass --checkpoint"),
    (["--data", "{data}", "--baselines", "magic"], "unknown baseline"),
    (["--data", "{data}", "--no-flow"], "pass --checkpoint"),
    (["--data", "{data}", "--baselines", "none"], "nothing to evaluate"),
    (["--data", "{data}", "--json", "{root}/out.md"], "must not end in .md"),
    # the table's path is a folder: refused before the evaluation, nothing written
    (["--data", "{data}", "--baselines", "reference", "--json", "{root}/tab/r.json"],
     "cannot write"),
])
def test_cli_errors_exit_2(setup, capsys, args, message):
    root, data, ck = setup
    (root / "empty").mkdir(exist_ok=True)  # an existing folder holding no clip
    (root / "tab" / "r.md").mkdir(parents=True, exist_ok=True)
    args = [a.format(root=root, data=data, ck=ck, empty=root / "empty") for a in args]
    assert main(["evaluate", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (root / "tab" / "r.json").exists()


def test_cli_default_checkpoint_and_bad_s(setup, capsys):
    _, data, _ = setup
    if not shipped_path().is_file():
        assert main(["evaluate", "--data", str(data), "--checkpoint", "default"]) == 2
        assert "no shipped checkpoint of variant 'tiny'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(data), "--s", "-1"])
    assert exc.value.code == 2


def test_gt_flow_oracle_runs_the_network_on_the_clips_flow(setup):
    _, data, _ = setup
    clip = read_clip(data / "clip_b")  # moves by (-1, 0) px per frame
    fw, bw = window_gt_flows(clip, 3, 5)
    assert fw.shape == bw.shape == (4, 2, 32, 40)
    # neighbours t-2, t-1, t+1, t+2: O_{t->t+k} = -k * shift, O_{t+k->t} its negative
    np.testing.assert_array_equal(fw[:, 0, 0, 0], [-2, -1, 1, 2])
    np.testing.assert_array_equal(bw[:, 0, 0, 0], [2, 1, -1, -2])
    model = create_model("tiny").eval()
    frames = np.ascontiguousarray(clip.ldr[1:6].transpose(0, 3, 1, 2), dtype=np.float32)
    exp = clip.exposures[1:6].astype(np.float32)
    oracle = model_method(model, 15.0, gt_flow=True)
    assert oracle.gt_flow and oracle.name == "dealthdr (GT flow)"
    got = oracle.run(frames, exp, (fw, bw))
    grid = (8, 10)  # 32x40 at flow_scale 4: vectors scaled by 1/4 too
    flows = tuple(torch.from_numpy(f[:, :, 0, 0]).view(4, 2, 1, 1).expand(4, 2, *grid) / 4
                  for f in (fw, bw))
    with torch.no_grad():
        want = model(torch.from_numpy(frames)[None], torch.from_numpy(exp)[None], s=15.0,
                     flows=flows)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    spynet = model_method(model, 15.0).run(frames, exp)
    assert np.abs(spynet - got).max() > 1e-4  # the oracle does replace SpyNet's flow


def test_zero_flow_oracle_runs_the_network_without_motion(setup, tmp_path):
    _, data, ck = setup
    clip = read_clip(data / "clip_b")
    model = create_model("tiny").eval()
    frames = np.ascontiguousarray(clip.ldr[1:6].transpose(0, 3, 1, 2), dtype=np.float32)
    exp = clip.exposures[1:6].astype(np.float32)
    oracle = model_method(model, math.inf, zero_flow=True)
    assert not oracle.gt_flow and oracle.name == "dealthdr (no flow)"
    zeros = (torch.zeros(4, 2, 8, 10),) * 2   # 32x40 at flow_scale 4
    with torch.no_grad():
        want = model(torch.from_numpy(frames)[None], torch.from_numpy(exp)[None], s=math.inf,
                     flows=zeros)[0].numpy()
    np.testing.assert_allclose(oracle.run(frames, exp), want, atol=1e-6)
    assert np.abs(model_method(model, math.inf).run(frames, exp) - want).max() > 1e-4
    with pytest.raises(ValueError, match="choose one"):
        model_method(model, 0.0, gt_flow=True, zero_flow=True)
    out = tmp_path / "z.json"
    assert main(["evaluate", "--data", str(data / "clip_b"), "--checkpoint", str(ck), "--s",
                 "0,inf", "--no-flow", "--baselines", "unaligned", "--no-fvvdp",
                 "--no-progress", "--json", str(out)]) == 0
    recs = {(r["method"], r["s"]) for r in json.loads(out.read_text())["records"]}
    assert recs == {("dealthdr", "0"), ("dealthdr", "inf"), ("dealthdr (no flow)", "0"),
                    ("dealthdr (no flow)", "inf"), ("unaligned", None)}


def test_flow_grid_of_an_unpadded_size_pads_and_scales():
    flow = torch.zeros(2, 2, 30, 37)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out = _on_flow_grid(flow, 4)
    assert out.shape == (2, 2, 8, 10)  # padded to 32x40 like the frames
    np.testing.assert_allclose(out[:, 0].numpy(), 0.75)
    np.testing.assert_allclose(out[:, 1].numpy(), -0.5)


def test_gt_flow_cli_adds_oracle_rows_and_refuses_clips_without_flow(setup, tmp_path, capsys):
    _, data, ck = setup
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data / "clip_a"), "--checkpoint", str(ck), "--s",
                 "0", "--gt-flow", "--baselines", "none", "--no-fvvdp", "--no-progress",
                 "--threads", "1", "--json", str(out)]) == 0
    recs = {(r["method"], r["s"]) for r in json.loads(out.read_text())["records"]}
    assert recs == {("dealthdr", "0"), ("dealthdr (GT flow)", "0")}
    bare = write_clip(tmp_path / "noflow" / "c", frames=5)
    for f in (bare / "flow").iterdir():
        f.unlink()
    (bare / "flow").rmdir()
    out2 = tmp_path / "r2.json"
    assert main(["evaluate", "--data", str(bare), "--checkpoint", str(ck), "--s", "0",
                 "--gt-flow", "--no-fvvdp", "--no-progress", "--json", str(out2)]) == 2
    assert "ground-truth flow oracle" in capsys.readouterr().err
    assert not out2.exists()


def test_short_clip_is_refused(tmp_path):
    write_clip(tmp_path / "c", frames=4)
    with pytest.raises(ValueError, match="5 frames"):
        evaluate(tmp_path, baseline_methods(["reference"]), fvvdp=False, progress=False)


def window(scene: np.ndarray, exposures: list[float], noise: float = 0.0) -> np.ndarray:
    """(5, 3, H, W) LDR window of one scene (static) rendered at `exposures`."""
    rng = np.random.default_rng(0)
    return np.stack([render(scene, e, noise, rng).transpose(2, 0, 1) for e in exposures])


def test_reference_is_exact_on_a_clean_unclipped_short_frame():
    scene = texture(24, 32, seed=2)  # max 0.7: a short frame does not clip
    exp = np.array([1.0, 8.0, 1.0, 8.0, 1.0])
    out = baselines.reference(window(scene, list(exp)), exp)
    assert np.allclose(out.transpose(1, 2, 0), scene, rtol=1e-5, atol=1e-7)
    # A long centre frame is divided by its exposure ratio (Eq. 1): exact where unclipped.
    dark = scene * 0.1
    exp = np.array([8.0, 1.0, 8.0, 1.0, 8.0])
    out = baselines.reference(window(dark, list(exp)), exp)
    assert np.allclose(out.transpose(1, 2, 0), dark, rtol=1e-5, atol=1e-7)


def test_classical_is_exact_on_a_clean_static_unclipped_window():
    dark = texture(32, 40, seed=3) * 0.1  # x 8 stays below 1: nothing clips
    exp = [8.0, 1.0, 8.0, 1.0, 8.0]
    out = baselines.classical(window(dark, exp), np.array(exp))
    assert np.allclose(out.transpose(1, 2, 0), dark, rtol=1e-3, atol=1e-6)


def test_classical_fills_clipped_highlights_of_a_long_centre():
    scene = texture(32, 40, seed=4)  # the highlight clips at x 8
    exp = [8.0, 1.0, 8.0, 1.0, 8.0]
    win = window(scene, exp)
    ref, cls = (f(win, np.array(exp)).transpose(1, 2, 0)
                for f in (baselines.reference, baselines.classical))
    clipped = win[2].max(axis=0) >= 0.999
    assert clipped.any()
    assert np.abs(cls - scene)[clipped].mean() < 0.1 * np.abs(ref - scene)[clipped].mean()


def test_merge_baselines_with_ground_truth_and_zero_flow():
    """`classical (GT flow)` is the merge aligned by the given flow: exact on a clean window
    that moves; `unaligned` merges the same window where it lies and is far off."""
    exp = [8.0, 1.0, 8.0, 1.0, 8.0]
    rng = np.random.default_rng(0)
    # frame t + k shows the scene moved k px left, so O_{t->t+k} = (-k, 0) (as `write_clip`);
    # x 8 does not clip
    big = texture(40, 60, seed=5) * 0.1
    frames = np.stack([render(big[:, 6 + k:6 + k + 48], e, 0.0, rng).transpose(2, 0, 1)
                       for k, e in zip(range(-2, 3), exp)])
    scene = big[:, 6:54]
    flows = np.zeros((4, 2, 40, 48), np.float32)
    flows[:, 0] = -np.array([-2, -1, 1, 2]).reshape(4, 1, 1)
    err = {}
    for name, out in (("aligned", baselines.classical_gt_flow(frames, np.array(exp),
                                                                (flows, -flows))),
                      ("reversed", baselines.classical_gt_flow(frames, np.array(exp),
                                                                 (-flows, flows))),
                      ("unaligned", baselines.unaligned(frames, np.array(exp)))):
        err[name] = np.abs(out.transpose(1, 2, 0) - scene).mean()
    assert err["aligned"] < 1e-5 * scene.mean()
    assert err["unaligned"] > 100 * err["aligned"] and err["reversed"] > 100 * err["aligned"]
    with pytest.raises(ValueError, match="flows must be"):
        baselines.classical_gt_flow(frames, np.array(exp), (flows[:3], flows[:3]))


def test_gt_flow_with_baselines_only_adds_the_merge_oracle(setup, tmp_path):
    _, data, _ = setup
    out = tmp_path / "b.json"
    assert main(["evaluate", "--data", str(data / "clip_b"), "--baselines",
                 "classical,unaligned", "--gt-flow", "--no-fvvdp", "--no-progress",
                 "--json", str(out)]) == 0
    recs = {r["method"]: r for r in json.loads(out.read_text())["records"]}
    assert set(recs) == {"classical", "unaligned", "classical (GT flow)"}
    # clip_b moves 1 px per frame: the merge aligned by its exact flow beats the unaligned one
    assert recs["classical (GT flow)"]["psnr_mu"] > recs["unaligned"]["psnr_mu"]


def test_baselines_check_their_input():
    with pytest.raises(ValueError, match="T odd"):
        baselines.reference(np.zeros((4, 3, 8, 8)), np.ones(4))
    with pytest.raises(ValueError, match="exposures"):
        baselines.classical(np.zeros((5, 3, 8, 8)), np.ones(3))


def test_several_checkpoints_in_one_table_keep_their_rows_apart(setup, capsys):
    root, data, ck = setup
    torch.manual_seed(7)
    other = root / "other"
    save_checkpoint(create_model("tiny"), other)  # same variant, other weights
    out = root / "two.json"
    assert main(["evaluate", "--data", str(data), "--checkpoint", f"{ck},{other}", "--s", "0",
                 "--baselines", "none", "--no-fvvdp", "--max-clips", "1", "--threads", "1",
                 "--no-progress", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["checkpoint"]: r for r in doc["records"]}
    # a checkpoint is named by its weights file, however it was given
    a, b = f"{ck}.safetensors", f"{other}.safetensors"
    assert set(rows) == {a, b} and len(doc["records"]) == 2
    assert all(r["variant"] == "tiny" and r["method"] == "dealthdr" for r in rows.values())
    assert rows[a]["psnr_mu"] != rows[b]["psnr_mu"]
    assert [n["checkpoint"] for n in doc["networks"]] == [a, b]
    assert "variant" not in doc  # one network's shortcut fields only for one network
    # two rows of one variant say which checkpoint they are
    assert f"| dealthdr | tiny ({b}) | 0 |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    for args, message in [([f"{ck},{ck}"], "given twice"),
                          ([f"{ck},{other}", "--variant", "tiny,tiny,tiny"], "2 checkpoints"),
                          ([str(ck), "--variant", "tiny,huge"], "unknown variant")]:
        assert main(["evaluate", "--data", str(data), "--no-progress", "--checkpoint",
                     *args]) == 2
        assert message in capsys.readouterr().err


def test_attention_ratio_is_what_fgma_attended_over_the_windows(setup):
    """The records' attention and tile ratios are the ForwardStats of the network's windows,
    summed over levels, neighbours, windows and clips: rising with s, the tiles at least as
    many as the positions need."""
    _, data, ck = setup
    model, _ = load_checkpoint(ck, "tiny")
    methods = [model_method(model, s) for s in (1.0, 15.0, 100.0)]
    result = evaluate(data, methods, fvvdp=False, progress=False)
    ratios = [(r["attention_ratio"], r["tile_ratio"]) for r in result["records"]]
    assert ratios == sorted(ratios) and ratios[-1][0] > ratios[0][0]
    assert all(0 <= a <= t <= 1 for a, t in ratios)
    # the same figures from the network's own stats, window by window
    clip = read_clip(data / "clip_a")
    frames = torch.from_numpy(np.ascontiguousarray(clip.ldr.transpose(0, 3, 1, 2)))
    exposures = torch.from_numpy(clip.exposures.astype(np.float32))
    attended = positions = 0
    by_centre = {}
    for t in (2, 3):
        with torch.no_grad():
            _, st = model.forward_with_stats(frames[None, t - 2:t + 3],
                                             exposures[None, t - 2:t + 3], s=15.0)
        attended, positions = attended + sum(st.attended), positions + sum(st.positions)
        kind = "short" if exposures[t] == exposures[t - 2:t + 3].min() else "long"
        by_centre[kind] = sum(st.attended) / sum(st.positions)
    clip_a = next(r for r in result["per_clip"] if r["clip"] == "clip_a" and r["s"] == "15")
    assert clip_a["attention_ratio"] == pytest.approx(attended / positions)
    # one short- and one long-centred window: each side's ratio is its own window's
    assert set(by_centre) == {"short", "long"}
    for kind, ratio in by_centre.items():
        assert clip_a[f"attention_ratio_{kind}"] == pytest.approx(ratio)
    pooled = next(r for r in result["records"] if r["s"] == "15")
    assert None not in (pooled["attention_ratio_short"], pooled["attention_ratio_long"])
