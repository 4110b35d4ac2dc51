"""No-reference measures (dealthdr.noref) and the real-footage demo's tools on a tiny video."""
import json

import cv2
import numpy as np
import pytest

from dealthdr import noref
from dealthdr.cli import main
from dealthdr.demo.alternate import alternate
from dealthdr.demo.alternate import main as alternate_main
from dealthdr.demo.compare import compare
from dealthdr.demo.compare import main as compare_main
from dealthdr.data.sequence import open_sequence
from tests.conftest import waves


def test_noise_estimate_recovers_gaussian_sigma():
    rng = np.random.default_rng(0)
    smooth = waves(128, 128, 0, count=3, freq=0.05) / 12 + 0.2
    for sigma in (0.01, 0.05):
        grey = smooth[..., 0] + sigma * rng.standard_normal((128, 128))
        assert noref.noise_sigma(grey) == pytest.approx(sigma, rel=0.15)


def test_blur_measure_orders_sharp_and_blurred():
    img = (waves(96, 96, 1, count=8, freq=1.2)[..., 0] / 16)
    blurred = cv2.GaussianBlur(img, (0, 0), 2.0)
    assert noref.blur_crete(img) < noref.blur_crete(blurred) < 1


def test_flicker_sees_brightness_pumping():
    base = np.full((16, 16, 3), 0.05)
    steady = noref.measure([base] * 4)
    pumping = noref.measure([base, base * 2, base, base * 2])
    assert steady["flicker"] == 0 and pumping["flicker"] > 0.05


def test_alternate_and_compare_on_a_tiny_video(tmp_path):
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        frame = np.full((48, 64, 3), 90, np.uint8)
        cv2.circle(frame, (8 + 4 * i, 24), 6, (250, 250, 250), -1)
        writer.write(frame)
    writer.release()
    alternate(video, tmp_path / "alt", frames=8, start=1, size=(32, 48))
    assert not list(tmp_path.glob(".*partial"))  # written aside, renamed into place
    with pytest.raises(ValueError, match="not an empty folder"):  # never mixed with old frames
        alternate(video, tmp_path / "alt", frames=8, start=1, size=(32, 48))
    for bad in (["--long-subframes", "0"], ["--long-blur", "2"], ["--stride", "0"],
                ["--frames", "2"], ["--lambda-shot", "nan"]):
        with pytest.raises(SystemExit) as stop:  # argparse's clean error, before any output
            alternate_main(["--video", str(video), "--out", str(tmp_path / "bad"), *bad])
        assert stop.value.code == 2 and not (tmp_path / "bad").exists()
    seq = open_sequence(tmp_path / "alt")
    assert seq.long.tolist() == [False, True] * 4 and seq.exposure_ratio == 8.0
    record = json.loads((tmp_path / "alt" / "alternate.json").read_text())
    assert record["ev"] == {"short": -2.0, "long": 1.0}
    # a long frame is brighter than its short neighbours by about the ratio where unclipped
    grey = np.mean(seq.frame(3) ** 2.2) / np.mean(seq.frame(2) ** 2.2)
    assert 5 < grey < 9
    assert main(["reconstruct", "--input", str(tmp_path / "alt"), "--output",
                 str(tmp_path / "rec"), "--no-progress", "--no-mp4", "--frames", "2:6"]) == 0
    out = compare(tmp_path / "alt", range(2, 6), {"shipped": tmp_path / "rec"},
                  tmp_path / "m.json", tmp_path / "m.png")
    assert set(out["results"]) == {"input", "shipped"}
    # exposure-normalised input pumps between noisy short and clipped long frames; the
    # reconstruction is steadier
    assert out["results"]["shipped"]["flicker"] < out["results"]["input"]["flicker"]
    # --show draws a chosen frame (here a long one) and refuses one that was not measured
    compare(tmp_path / "alt", range(2, 6), {"shipped": tmp_path / "rec"}, None,
            tmp_path / "long.png", show=3)
    assert cv2.imread(str(tmp_path / "long.png")).shape[1] == 2 * 48
    with pytest.raises(ValueError, match="--show 6"):
        compare(tmp_path / "alt", range(2, 6), {"shipped": tmp_path / "rec"}, None,
                tmp_path / "no.png", show=6)
    assert not (tmp_path / "no.png").exists()
    # a zoom corner outside the frame, or a method folder that is not there: refused before
    # anything is written, and the CLI says so in one line
    with pytest.raises(ValueError, match="--crop 40 0"):
        compare(tmp_path / "alt", range(2, 6), {"shipped": tmp_path / "rec"},
                tmp_path / "c.json", tmp_path / "c.png", crop=(40, 0))
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "c.png").exists()
    for args in (["--method", f"x={tmp_path / 'nope'}"], []):
        with pytest.raises(SystemExit) as stop:
            compare_main(["--input", str(tmp_path / ("alt" if args else "nope")), *args])
        assert stop.value.code == 2
    png = cv2.imread(str(tmp_path / "m.png"))
    assert png.shape == (2 * 32, 2 * 48, 3)


def test_long_exposure_smears_motion_instead_of_stacking_copies():
    """A textured square moving 8 px per source frame: the plain mean of 3 frames has jumps
    where its copies overlap (a double image), the flow-interpolated exposure a smooth ramp,
    with the same light."""
    from dealthdr.demo.alternate import long_exposure

    rng = np.random.default_rng(0)
    bg = 0.05 + 0.02 * rng.random((48, 96, 3), dtype=np.float32)
    tex = 0.4 + 0.4 * rng.random((12, 12, 3), dtype=np.float32)
    frames = []
    for k in range(3):
        f = bg.copy()
        f[18:30, 30 + 8 * k:42 + 8 * k] = tex
        frames.append(f)
    lin = np.stack(frames)
    profile = {n: long_exposure(lin, 0, 3, n)[18:30, 30:62].mean(axis=(0, 2)) for n in (1, 8)}
    assert np.abs(np.diff(profile[1])).max() > 0.15
    assert np.abs(np.diff(profile[8])).max() < 0.06
    np.testing.assert_allclose(profile[8].sum(), profile[1].sum(), rtol=0.03)
