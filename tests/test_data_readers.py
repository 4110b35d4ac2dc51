"""Readers: HDR frame folders as video, DeepHDRVideo scenes as clips."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from dealthdr.data.io import write_exr
from dealthdr.data.readers import read_deephdrvideo_scene, read_hdr_video


def test_hdr_video_in_name_order(tmp_path):
    for i in (2, 0, 1):
        write_exr(tmp_path / f"frame_{i}.exr", np.full((4, 6, 3), float(i), np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    video = read_hdr_video(tmp_path)
    assert video.shape == (3, 4, 6, 3) and video.dtype == np.float32
    assert video[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_hdr_video_errors(tmp_path):
    with pytest.raises(ValueError, match="no HDR frames"):
        read_hdr_video(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_hdr_video(tmp_path / "missing")
    write_exr(tmp_path / "a.exr", np.ones((4, 6, 3), np.float32))
    write_exr(tmp_path / "b.exr", np.ones((4, 8, 3), np.float32))
    with pytest.raises(ValueError, match="one size"):
        read_hdr_video(tmp_path)


def _fake_scene(root: Path, frames: int = 6, h: int = 24, w: int = 32) -> tuple[np.ndarray, float]:
    """A DeepHDRVideo-style scene: EV-2 / EV+1 16-bit TIFFs, Radiance GT normalised to max 1
    (as the dataset's loaders do), one frame without GT. Returns (radiance in short units, the
    factor the GT files were divided by)."""
    root.mkdir()
    (root / "Exposures.txt").write_text("-2.0\n1.0\n")
    y, x = np.mgrid[0:h, 0:w] / 8.0
    radiance, lines = [], []
    for t in range(frames):
        rad = np.stack([0.05 + 0.04 * np.sin(x + t), 0.06 + 0.03 * np.cos(y - t),
                        0.04 + 0.02 * np.sin(x + y)], -1)
        radiance.append(rad)
        expo = 8.0 if t % 2 else 1.0
        ldr = np.clip(rad * expo, 0, 1) ** (1 / 2.2)
        cv2.imwrite(str(root / f"{t:04d}.tif"), np.round(ldr * 65535).astype(np.uint16)[..., ::-1])
        lines.append(f"{t:04d}.tif {t:04d}.hdr")
    radiance = np.stack(radiance)
    peak = float(radiance.max())
    for t in range(1, frames):  # frame 0 has no ground truth
        cv2.imwrite(str(root / f"{t:04d}.hdr"), (radiance[t] / peak).astype(np.float32)[..., ::-1])
    (root / "img_hdr_list.txt").write_text("\n".join(lines) + "\n")
    return radiance, peak


def test_deephdrvideo_scene_to_clip(tmp_path):
    radiance, peak = _fake_scene(tmp_path / "scene")
    clip = read_deephdrvideo_scene(tmp_path / "scene")
    assert clip.ldr.shape == (6, 24, 32, 3) and clip.flow is None
    assert clip.exposures.tolist() == [1.0, 8.0] * 3
    assert clip.long.tolist() == [False, True] * 3
    assert clip.meta["exposure_ratio"] == 8.0 and clip.meta["format"] == "dealthdr-clip/1"
    assert clip.meta["gt_available"] == [False] + [True] * 5
    assert np.isnan(clip.hdr[0]).all()
    # The GT is brought back to short-exposure units (Radiance RGBE keeps ~1 % precision).
    assert clip.meta["gt_scale"] == pytest.approx(peak, rel=0.02)
    assert np.allclose(clip.hdr[1:], radiance[1:], rtol=0.03, atol=1e-3)


def test_deephdrvideo_without_gt_and_errors(tmp_path):
    _fake_scene(tmp_path / "scene")
    (tmp_path / "scene" / "img_hdr_list.txt").unlink()
    clip = read_deephdrvideo_scene(tmp_path / "scene")  # falls back to the sorted *.tif
    assert clip.hdr is None and len(clip) == 6
    (tmp_path / "scene" / "Exposures.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Exposures.txt"):
        read_deephdrvideo_scene(tmp_path / "scene")
    with pytest.raises(FileNotFoundError):
        read_deephdrvideo_scene(tmp_path / "nowhere")


def test_truncated_exr_and_unreadable_flow_are_named(tmp_path):
    import json

    from dealthdr.data.clip import read_clip
    from dealthdr.data.io import read_hdr
    from tests.clipfactory import write_translation_clip

    write_exr(tmp_path / "a.exr", np.ones((8, 8, 3), np.float32))
    data = (tmp_path / "a.exr").read_bytes()
    (tmp_path / "a.exr").write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match="a.exr is not a readable OpenEXR file"):
        read_hdr(tmp_path / "a.exr")
    clip = write_translation_clip(tmp_path / "c", frames=6)
    np.save(clip / "flow" / "000002.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="000002.npy is not a readable flow array"):
        read_clip(clip)
    meta = json.loads((clip / "meta.json").read_text())
    np.save(clip / "flow" / "000002.npy", np.zeros((1, 2, meta["height"], meta["width"]),
                                                   np.float16))
    with pytest.raises(ValueError, match="000002.npy: flow of shape"):
        read_clip(clip)
