"""`dealthdr reconstruct`: edge windows, tiling, agreement with `dealthdr evaluate`, RAW end to
end, and that a failed run leaves no output behind."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dealthdr import metrics
from dealthdr.checkpoint import load_checkpoint
from dealthdr.cli import main
from dealthdr.data.degrade import (XYZ_TO_CAM, DegradeConfig, mosaic, sample_camera, sensor,
                                   unprocess)
from dealthdr.data.dng import write_dng
from dealthdr.data.io import read_hdr
from dealthdr.data.sequence import open_sequence
from dealthdr.data.synth import BUNDLED_HDRI, SynthConfig, load_panoramas, synth_dataset
from dealthdr.evaluate import evaluate, model_method
from dealthdr.reconstruct import infer, reconstruct, window_indices
from dealthdr.testclip import make_clip
from tests.conftest import waves


@pytest.fixture(scope="module")
def model():
    return load_checkpoint("default")[0]


@pytest.mark.parametrize("n", [3, 4, 7, 10])
def test_reflected_windows_keep_the_alternation(n):
    for t in range(n):
        idx = window_indices(t, n)
        assert idx[2] == t and all(0 <= i < n for i in idx)
        assert [i % 2 for i in idx] == [(t + k) % 2 for k in range(-2, 3)]
    assert window_indices(0, 7) == [2, 1, 0, 1, 2]
    assert window_indices(6, 7) == [4, 5, 6, 5, 4]
    assert window_indices(3, 7) == [1, 2, 3, 4, 5]


class CentreLinear(torch.nn.Module):
    """Stands in for the network: the linearised centre frame, a purely local map, so any
    tiling must reproduce it exactly."""

    cfg = type("Cfg", (), {"flow_scale": 4})()

    def window_flows(self, frames, exposures):
        h, w = frames.shape[-2:]
        zeros = torch.zeros(4, 2, -(-h // 8) * 2, -(-w // 8) * 2)
        return zeros, zeros

    def forward(self, frames, exposures, s=15.0, budget=None, flows=None):
        rel = (exposures / exposures.min(dim=1, keepdim=True).values)[:, 2].view(-1, 1, 1, 1)
        return frames[:, 2] ** 2.2 / rel


def test_tile_blending_is_exact_for_a_local_map():
    frames, exposures, _ = make_clip(70, 90)
    f = frames[0].permute(0, 2, 3, 1).numpy()
    e = exposures[0].numpy()
    full = infer(CentreLinear(), f, e, 15.0, tile=0)
    tiled = infer(CentreLinear(), f, e, 15.0, tile=32, overlap=8)
    assert np.allclose(tiled, full, rtol=1e-5, atol=1e-7)


def test_tiled_network_matches_untiled(model):
    frames, exposures, hdr = make_clip(96, 128)
    f = frames[0].permute(0, 2, 3, 1).numpy()
    e = exposures[0].numpy()
    gt = hdr[0].permute(1, 2, 0).numpy()
    full = infer(model, f, e, 15.0, tile=0)
    tiled = infer(model, f, e, 15.0, tile=64, overlap=16)
    one_pass = infer(model, f, e, 15.0, tile=64, overlap=16, passes=1)
    # frame flows and, from pass 2, the frame's attention statistics, with the shipped weights:
    # 68.7 dB from untiled (one pass, own statistics: 65.8 dB)
    assert metrics.psnr_mu(tiled, full, 1.0) > 67
    assert metrics.psnr_mu(tiled, full, 1.0) > metrics.psnr_mu(one_pass, full, 1.0) + 2
    assert abs(metrics.psnr_mu(tiled, gt, 1.0) - metrics.psnr_mu(full, gt, 1.0)) < 0.1


def test_carried_statistics_make_one_pass_as_good_as_two(model):
    """A frame that starts from the sums of the last frame of its exposure needs one pass."""
    from dealthdr.reconstruct import infer_with_statistics

    ldr, ex, _ = make_clip(96, 128, frames=9, seed=3)

    def window(t):
        return ldr[0, t - 2:t + 3].permute(0, 2, 3, 1).numpy(), ex[0, t - 2:t + 3].numpy()

    _, sums = infer_with_statistics(model, *window(2), 15.0, tile=64, overlap=16)
    full, none = infer_with_statistics(model, *window(4), 15.0, tile=0)
    assert none is None and len(sums) > 0
    one = infer(model, *window(4), 15.0, tile=64, overlap=16, passes=1)
    two = infer(model, *window(4), 15.0, tile=64, overlap=16, passes=2)
    carried, _ = infer_with_statistics(model, *window(4), 15.0, tile=64, overlap=16, given=sums)
    # with the shipped weights 71.4 dB from untiled (one fresh pass 67.5)
    assert metrics.psnr_mu(carried, full, 1.0) > metrics.psnr_mu(one, full, 1.0) + 2.5
    assert metrics.psnr_mu(carried, full, 1.0) > metrics.psnr_mu(two, full, 1.0) - 1


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory):
    cfg = SynthConfig(frames=8, height=48, width=64, degrade=DegradeConfig(subframes=8))
    root = tmp_path_factory.mktemp("synth")
    synth_dataset(root, 1, cfg, load_panoramas(BUNDLED_HDRI, "heldout", cfg), seed=3,
                  progress=False)
    return next(p for p in root.iterdir() if (p / "meta.json").is_file())


def test_reconstruct_reproduces_evaluate(synth_clip, model, tmp_path):
    ev = evaluate(synth_clip, [model_method(model, 15.0)], fvvdp=False, progress=False)
    expected = ev["records"][0]["psnr_mu"]
    seq = open_sequence(synth_clip)
    out = reconstruct(seq, model, tmp_path / "f32", s=15.0, half=False, progress=False)
    gt = out["ground_truth"]
    assert gt["frames_full_windows"] == ev["records"][0]["frames"] == 4
    assert gt["psnr_mu_full_windows"] == pytest.approx(expected, abs=1e-6)
    assert len(list((tmp_path / "f32" / "hdr").glob("*.exr"))) == 8  # edges too
    # streaming (the default) against every window from scratch, edge frames included
    windows = reconstruct(seq, model, tmp_path / "win", s=15.0, half=False, previews=False,
                          stream=False, progress=False)
    assert out["stream"] and not windows["stream"]
    for t in range(8):
        a, b = (read_hdr(tmp_path / d / "hdr" / f"{t:06d}.exr") for d in ("f32", "win"))
        assert np.abs(a - b).max() <= 1e-5, t
    half = reconstruct(seq, model, tmp_path / "f16", s=15.0, progress=False)["ground_truth"]
    assert half["psnr_mu_full_windows"] == pytest.approx(expected, abs=0.05)
    assert (tmp_path / "f16" / "preview.mp4").stat().st_size > 0
    assert len(list((tmp_path / "f16" / "preview").glob("*.png"))) == 8
    # the reflected edge frames are real reconstructions, not far below the interior
    edge = np.mean([gt["per_frame"][k] for k in ("0", "1", "6", "7")])
    assert edge > expected - 3
    # tiled, with each exposure's statistics carried from frame to frame, or fresh per frame
    for mode in (True, False):
        tiled = reconstruct(seq, model, tmp_path / f"t{mode}", s=15.0, tile=32, overlap=8,
                            carry_statistics=mode, previews=False, progress=False)
        assert tiled["tile_statistics"] == ("carried" if mode else "fresh")
        assert tiled["ground_truth"]["psnr_mu_full_windows"] == pytest.approx(expected, abs=0.3)


def write_dng_burst(folder: Path, frames=6, size=(48, 64), seed=0):
    """A RAW burst with known exposure times (1/800 s and 1/100 s, ISO 200) and known noise
    (the synthesis's sensor model, day-time lambdas); returns the scene in short units."""
    rng = np.random.default_rng(seed)
    cfg = DegradeConfig(bits=12)
    cam = sample_camera(rng, cfg)
    hdr = waves(*size, seed, count=5, freq=0.3)
    hdr = 0.01 + 0.12 * hdr / hdr.max()  # short exposure mid-dark, long one unclipped
    xyz2cam = np.einsum("k,kij->ij", cam.ccm_weights, np.array(list(XYZ_TO_CAM.values())) / 1e4)
    folder.mkdir(parents=True)
    for i in range(frames):
        t = 1 / 100 if i % 2 else 1 / 800
        m = sensor(mosaic(unprocess(hdr * t * 800, cam)), cam, rng, cfg)
        codes = (np.round(m * (4095 - 64)) + 64).astype(np.uint16)
        write_dng(folder / f"RAW_{i:03d}.dng", codes, black_level=64, white_level=4095,
                  exposure_time=t, iso=200, wb_gains=cam.wb, color_matrix=xyz2cam)
    return hdr, cam


def test_raw_dng_burst_end_to_end(tmp_path):
    hdr, cam = write_dng_burst(tmp_path / "raw")
    code = main(["reconstruct", "--input", str(tmp_path / "raw"), "--output",
                 str(tmp_path / "out"), "--no-progress", "--no-mp4"])
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "raw" and manifest["exr"] == "half"
    assert manifest["input"]["exposure_ratio"] == pytest.approx(8.0, rel=1e-4)
    files = sorted((tmp_path / "out" / "hdr").glob("*.exr"))
    assert len(files) == 6
    # linear output in short-exposure units: the developed scene (camera white balance and
    # colour matrix undone by the development) is the radiance the sensor saw at 1/800 s
    out = np.stack([read_hdr(p) for p in files])
    assert np.isfinite(out).all() and (out >= 0).all()
    ratio = np.median(out, axis=(0, 1, 2)) / np.median(hdr, axis=(0, 1))
    assert np.allclose(ratio, 1, atol=0.05)  # per channel: colour and exposure both right
    # a short-centred frame: measured 41.6 dB, the noisy short frame alone 26.6 dB
    assert metrics.psnr_mu(out[2], hdr, 1.0) > 35


def test_corrupt_dng_exits_2_with_no_output(tmp_path, capsys):
    write_dng_burst(tmp_path / "raw")
    bad = tmp_path / "raw" / "RAW_003.dng"
    bad.write_bytes(bad.read_bytes()[:2000])
    code = main(["reconstruct", "--input", str(tmp_path / "raw"), "--output",
                 str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "RAW_003.dng is not a RAW file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_failure_mid_run_leaves_nothing(tmp_path, model):
    from tests.test_sequence import write_pngs

    write_pngs(tmp_path / "in", exposures=[1, 8] * 4)
    png = tmp_path / "in" / "frame_006.png"
    png.write_bytes(png.read_bytes()[:60])  # the header is intact, the pixels are not
    seq = open_sequence(tmp_path / "in")
    with pytest.raises(ValueError, match="frame_006.png is not a readable image"):
        reconstruct(seq, model, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_existing_output_is_kept_unless_overwrite(tmp_path, model):
    from tests.test_sequence import write_pngs

    write_pngs(tmp_path / "in")
    seq = open_sequence(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        reconstruct(seq, model, tmp_path / "out", progress=False, previews=False)
    reconstruct(seq, model, tmp_path / "out", s=math.inf, progress=False, previews=False,
                overwrite=True, frames=range(2, 4))
    assert sorted(p.name for p in (tmp_path / "out" / "hdr").iterdir()) == \
        ["000002.exr", "000003.exr"]
    assert not (tmp_path / "out" / "keep.txt").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["s"] == "inf"


def test_corrupt_first_frame_or_unusable_paths_exit_2_with_nothing_written(tmp_path, capsys):
    """The first frame is read before the staging folder exists; an --output under a file, an
    unusable --device and a bad --fps are one line and exit 2, not a traceback."""
    from tests.test_sequence import write_pngs

    write_pngs(tmp_path / "in")
    png = tmp_path / "in" / "frame_000.png"
    png.write_bytes(png.read_bytes()[:60])
    base = ["reconstruct", "--no-progress", "--no-preview", "--no-mp4"]
    assert main([*base, "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out")]) == 2
    assert "frame_000.png is not a readable image" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    write_pngs(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    for extra, message in ((["--output", str(tmp_path / "file" / "out")], "Not a directory"),
                           (["--output", str(tmp_path / "o"), "--device", "nope"],
                            "--device nope is not usable"),
                           (["--output", str(tmp_path / "o"), "--fps", "-5"],
                            "--fps must be a positive number")):
        assert main([*base, "--input", str(tmp_path / "in"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in"]


def test_overwrite_replaces_a_file_and_leaves_no_backup(tmp_path, model):
    from tests.test_sequence import write_pngs

    write_pngs(tmp_path / "in")
    (tmp_path / "out").write_text("an old file")
    reconstruct(open_sequence(tmp_path / "in"), model, tmp_path / "out", progress=False,
                previews=False, mp4=False, overwrite=True, frames=range(0, 1))
    assert (tmp_path / "out" / "hdr" / "000000.exr").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
