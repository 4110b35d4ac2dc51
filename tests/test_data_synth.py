"""`dealthdr synth`: clip contents, blur, determinism, resume, bad inputs, the CLI."""
import hashlib
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dealthdr.cli import main
from dealthdr.data.clip import list_clips, read_clip
from dealthdr.data.degrade import DegradeConfig
from dealthdr.data.io import write_exr
from dealthdr.data.panorama import CameraMotionConfig
from dealthdr.data.scene import exposure_schedule
from dealthdr.data.synth import (BUNDLED_HDRI, HELDOUT, SynthConfig, load_panoramas, load_video,
                                 synth_clip, synth_dataset, with_motion_scale)

SMALL = SynthConfig(frames=6, height=48, width=64, degrade=DegradeConfig(subframes=8))
ARGS = ["--frames", "6", "--size", "48x64", "--subframes", "8"]


@pytest.fixture(scope="module")
def panoramas():
    return load_panoramas(BUNDLED_HDRI, "all", SMALL)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_is_fixed_and_disjoint():
    train = load_panoramas(BUNDLED_HDRI, "train", SMALL).names
    held = load_panoramas(BUNDLED_HDRI, "heldout", SMALL).names
    assert sorted(held) == sorted(HELDOUT) and not set(train) & set(held)
    assert len(train) + len(held) == 8


def test_schedule_alternates_and_gt_is_the_middle():
    s = exposure_schedule(6, 64)
    assert [e.long for e in s] == [False, True] * 3
    assert (s[0].start, s[0].count, s[0].gt) == (0, 1, 0)
    assert (s[1].start, s[1].count, s[1].gt) == (1, 63, 32)  # sub-frames 1..63, middle 32
    assert s[2].start == 64
    s = exposure_schedule(6, 8, start_long=True)
    assert [e.long for e in s] == [True, False] * 3 and s[0].start == 1
    for sub in (2, 4, 8, 64):  # every allowed count: the ground truth is the blur's centroid
        for e in exposure_schedule(4, sub):
            assert e.gt == e.start + (e.count - 1) / 2
    with pytest.raises(ValueError, match="subframes must be even"):
        DegradeConfig(subframes=7)   # a long frame of 6 sub-frames has no middle one


def test_clip_contents(panoramas):
    clip = synth_clip(SMALL, panoramas, seed=0, index=0)
    assert clip.ldr.shape == clip.hdr.shape == (6, 48, 64, 3)
    assert clip.ldr.min() >= 0 and clip.ldr.max() <= 1 and clip.hdr.min() >= 0
    assert clip.flow.shape == (6, 4, 2, 48, 64)
    # NaN exactly where t + k lies outside the clip.
    for t in range(6):
        for j, k in enumerate((-2, -1, 1, 2)):
            assert np.isnan(clip.flow[t, j]).all() == (not 0 <= t + k < 6)
    meta = clip.meta
    assert meta["exposures"] == [1.0, 8.0] * 3 and meta["exposure_ratio"] == 8.0
    assert meta["noise"]["condition"] in ("day", "night") and meta["noise"]["lambda_shot"] > 0
    assert meta["scene"]["panorama"] in panoramas.names


def _sharpness(img: np.ndarray) -> float:
    return float(np.abs(np.diff(img, axis=1)).mean() + np.abs(np.diff(img, axis=0)).mean())


@pytest.mark.parametrize("moving", [True, False])
def test_long_frames_are_blurred_by_motion(panoramas, moving):
    """Noise-free, against each frame's own ground truth: short frames keep its sharpness; long
    frames lose it under camera motion (and only then)."""
    speed = (20.0, 24.0) if moving else (1e-6, 1e-6)
    cfg = replace(SMALL, motion_probs=(1.0, 0.0, 0.0), degrade=DegradeConfig(
        subframes=16, noise_scale=0.0), camera=CameraMotionConfig(speed_px=speed))
    sharp = {False: [], True: []}
    for index in range(3):
        clip = synth_clip(cfg, panoramas, seed=1, index=index)
        for t, is_long in enumerate(clip.meta["long"]):
            white = 1 / clip.meta["exposures"][t]  # compare in the frame's unclipped range
            lin = np.clip(clip.ldr[t].astype(np.float64) ** 2.2 * white, 0, white)
            sharp[is_long].append(_sharpness(lin) / _sharpness(np.clip(clip.hdr[t], 0, white)))
    short, long = np.mean(sharp[False]), np.mean(sharp[True])
    assert 0.9 < short < 1.1
    if moving:
        assert long < 0.85 * short
    else:
        assert long > 0.9 * short


def test_motion_scale_scales_the_ground_truth_motion(panoramas):
    """The same seed with the speed ranges at a quarter: a quarter of the camera motion."""
    cfg = replace(SMALL, motion_probs=(1.0, 0.0, 0.0))
    mean = {f: np.nanmean([np.nanmean(np.abs(synth_clip(with_motion_scale(cfg, f), panoramas,
                                                         seed=3, index=i).flow))
                           for i in range(2)]) for f in (1.0, 0.25)}
    assert 0.2 < mean[0.25] / mean[1.0] < 0.3
    assert with_motion_scale(cfg, 1.0) is cfg
    with pytest.raises(ValueError, match="motion scale"):
        with_motion_scale(cfg, -1.0)


def test_determinism_byte_identical(tmp_path, panoramas):
    synth_dataset(tmp_path / "a", 2, SMALL, panoramas, seed=7, progress=False)
    synth_dataset(tmp_path / "b", 2, SMALL, panoramas, seed=7, progress=False)
    synth_dataset(tmp_path / "c", 2, SMALL, panoramas, seed=8, progress=False)
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(a) == 2 * (1 + 3 * 6) and a == b
    assert a != c


def test_resume_keeps_finished_clips(tmp_path, panoramas):
    out = tmp_path / "out"
    synth_dataset(out, 1, SMALL, panoramas, seed=0, progress=False)
    first = _hashes(out / "clip_000000")
    mtime = (out / "clip_000000" / "meta.json").stat().st_mtime_ns
    (out / ".clip_000001.partial").mkdir()  # debris of an interrupted run
    (out / ".clip_000001.partial" / "junk").write_text("x")
    synth_dataset(out, 2, SMALL, panoramas, seed=0, progress=False)
    assert (out / "clip_000000" / "meta.json").stat().st_mtime_ns == mtime
    assert _hashes(out / "clip_000000") == first
    assert [p.name for p in list_clips(out)] == ["clip_000000", "clip_000001"]
    assert not (out / ".clip_000001.partial").exists()
    with pytest.raises(ValueError, match="other settings"):
        synth_dataset(out, 2, SMALL, panoramas, seed=1, progress=False)


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["synth", *args])
    return rc, capsys.readouterr().err


def _pano_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hdri"
    d.mkdir()
    shutil.copy(BUNDLED_HDRI / "night.exr", d / "night.exr")
    return d


@pytest.mark.parametrize("case,message", [
    ("png", "LDR image"), ("corrupt", "not a readable OpenEXR"), ("tiny", "too small"),
    ("odd", "must be even"), ("few", ">= 6"), ("empty", "no HDR panoramas"),
    ("aspect", "not an equirectangular"), ("split", "names the bundled panoramas' split"),
    ("motion", "--motion-scale must be finite and > 0"), ("subframes", "subframes must be even"),
])
def test_bad_inputs_fail_cleanly(tmp_path, capsys, case, message):
    d = _pano_dir(tmp_path)
    args = ARGS.copy()
    if case == "png":
        (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    elif case == "corrupt":
        (d / "broken.exr").write_bytes(b"v/1\x01 not really an exr")
    elif case == "tiny":
        write_exr(d / "tiny.exr", np.ones((32, 64, 3), np.float32))
    elif case == "odd":
        args[1] = "7"
    elif case == "few":
        args[1] = "4"
    elif case == "empty":
        (d / "night.exr").unlink()
    elif case == "aspect":
        write_exr(d / "square.exr", np.ones((256, 256, 3), np.float32))
    elif case == "split":
        args += ["--split", "train"]  # the bundled split means nothing for a user's folder
    elif case == "motion":
        args += ["--motion-scale", "0"]
    elif case == "subframes":
        args[args.index("--subframes") + 1] = "9"
    out = tmp_path / "out"
    rc, err = _run_cli(["--hdri-dir", str(d), "--out", str(out), *args], capsys)
    assert rc != 0 and message in err
    assert not out.exists()


def test_own_panorama_folder_is_used_whole(tmp_path, capsys):
    """A user's folder has no held-out names: its night.exr (a bundled held-out name) is used."""
    out = tmp_path / "out"
    rc, err = _run_cli(["--hdri-dir", str(_pano_dir(tmp_path)), "--out", str(out), "--clips",
                        "1", *ARGS], capsys)
    assert rc == 0, err
    assert read_clip(out / "clip_000000").meta["source"]["names"] == ["night"]


def test_hdr_video_source(tmp_path, capsys):
    """Frames of an HDR video are sub-frames directly: clips without flow."""
    video = tmp_path / "video"
    y, x = np.mgrid[0:40, 0:52] / 10.0
    for i in range(30):
        frame = np.stack([1 + np.sin(x + 0.2 * i), 1 + np.cos(y - 0.1 * i), 1 + 0 * x], -1)
        write_exr(video / f"f{i:03d}.exr", (frame * 0.5).astype(np.float32))
    out = tmp_path / "out"
    args = ["--frames", "6", "--size", "32x48", "--subframes", "4"]
    assert _run_cli(["--hdr-video", str(video), "--out", str(out), *args], capsys)[0] == 0
    clip = read_clip(out / "clip_000000")
    assert clip.flow is None and clip.hdr.shape == (6, 32, 48, 3)
    assert clip.meta["source"]["kind"] == "hdr-video"
    rc, err = _run_cli(["--hdr-video", str(video), "--out", str(tmp_path / "scaled"),
                        "--motion-scale", "0.5", *args], capsys)
    assert rc != 0 and "brings its own motion" in err and not (tmp_path / "scaled").exists()
    with pytest.raises(ValueError, match="need 192"):  # L S L S L S: sub-frames 1..192
        load_video(video, replace(SMALL, width=48, height=32, start_long=True,
                                  degrade=DegradeConfig()))


def test_cli_subprocess(tmp_path):
    out = tmp_path / "clips"
    proc = subprocess.run([sys.executable, "-m", "dealthdr", "synth", "--out", str(out),
                           "--clips", "2", "--seed", "3", "--start-long", *ARGS],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    clips = list_clips(out)
    assert len(clips) == 2
    clip = read_clip(clips[1])
    assert clip.meta["exposures"][:2] == [8.0, 1.0] and clip.meta["seed"] == 3
    assert clip.flow is not None and np.isfinite(clip.flow[2]).all()
    assert clip.meta["scene"]["panorama"] not in HELDOUT  # default split: train
