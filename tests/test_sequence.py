"""Reading user footage (dealthdr.data.sequence / rawseq): every input kind and every error."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from dealthdr.cli import main
from dealthdr.data.degrade import (XYZ_TO_CAM, DegradeConfig, mosaic, process, sample_camera,
                                   sensor, unprocess)
from dealthdr.data.dng import write_dng
from dealthdr.data.io import write_png16
from dealthdr.data.rawseq import demosaic_cfa
from dealthdr.data.sequence import classify_long, open_sequence
from tests.conftest import waves

EXPOSURES = [1.0, 8.0, 1.0, 8.0, 1.0, 8.0]


def scene(h=32, w=40, seed=0):
    img = waves(h, w, seed, count=5, freq=0.4)
    return 0.02 + 0.1 * img / img.max()


def ldr(hdr, exposure):
    return np.clip(hdr * exposure, 0, 1) ** (1 / 2.2)


def write_pngs(folder: Path, bits=16, exposures=EXPOSURES, size=(32, 40), sidecar=True):
    folder.mkdir(parents=True, exist_ok=True)
    hdr = scene(*size)
    names = []
    for i, e in enumerate(exposures):
        name = f"frame_{i:03d}.png"
        img = ldr(hdr, e)
        if bits == 16:
            write_png16(folder / name, img)
        else:
            cv2.imwrite(str(folder / name), np.round(img[..., ::-1] * 255).astype(np.uint8))
        names.append(name)
    if sidecar:
        (folder / "exposures.json").write_text(json.dumps(dict(zip(names, exposures))))
    return hdr


@pytest.mark.parametrize("bits", [8, 16])
def test_png_sequence_with_sidecar(tmp_path, bits):
    hdr = write_pngs(tmp_path, bits=bits)
    seq = open_sequence(tmp_path)
    assert (seq.kind, len(seq), seq.height, seq.width) == ("images", 6, 32, 40)
    assert seq.long.tolist() == [False, True] * 3 and seq.exposure_ratio == 8.0
    assert seq.info["bit_depth"] == bits and seq.info["exposure_source"] == "exposures.json"
    step = 1 / 255 if bits == 8 else 1 / 65535
    assert np.abs(seq.frame(2) - ldr(hdr, 1.0)).max() <= step
    assert seq.frame(2).dtype == np.float32


def test_long_frames_come_from_exposures_not_position(tmp_path):
    write_pngs(tmp_path, exposures=[8.0, 1.0, 8.0, 1.0, 8.0, 1.0])
    assert open_sequence(tmp_path).long.tolist() == [True, False] * 3
    # auto exposure drifts, the alternation is still found
    assert classify_long(np.array([1.0, 7.0, 1.3, 9.0, 1.1]), list("abcde")).tolist() == \
        [False, True, False, True, False]


def test_tiff16_sequence_and_natural_order(tmp_path):
    hdr = scene()
    exposures = {}
    for i, e in enumerate(EXPOSURES):  # f2 must come before f10
        name = f"f{[1, 2, 10, 11, 20, 21][i]}.tif"
        tifffile.imwrite(tmp_path / name, np.round(ldr(hdr, e) * 65535).astype(np.uint16),
                         photometric="rgb")
        exposures[name] = e
    (tmp_path / "exposures.json").write_text(json.dumps(exposures))
    seq = open_sequence(tmp_path)
    assert seq.names == ["f1.tif", "f2.tif", "f10.tif", "f11.tif", "f20.tif", "f21.tif"]
    assert seq.info["bit_depth"] == 16 and seq.long.tolist() == [False, True] * 3
    assert np.abs(seq.frame(1) - ldr(hdr, 8.0)).max() < 1e-4


def test_video_with_sidecar_cycle_and_backward_reads(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (40, 32))
    frames = [np.full((32, 40, 3), 20 * i + 30, np.uint8) for i in range(7)]
    for f in frames:
        writer.write(f)
    writer.release()
    with pytest.raises(ValueError, match="no exposure metadata"):
        open_sequence(path)
    (tmp_path / "exposures.json").write_text(json.dumps({"v.avi": [1, 4]}))
    seq = open_sequence(path)
    assert (seq.kind, len(seq), seq.info["fps"]) == ("video", 7, 25.0)
    assert seq.exposures.tolist() == [1, 4, 1, 4, 1, 4, 1]
    late, early = seq.frame(5).copy(), seq.frame(1)
    assert abs(late.mean() * 255 - 130) < 3 and abs(early.mean() * 255 - 50) < 3
    assert open_sequence(path, [4, 1]).long.tolist() == [True, False] * 3 + [True]
    (tmp_path / "exposures.json").write_text(json.dumps({"v.avi": "14"}))  # not [1, 4]
    with pytest.raises(ValueError, match="exposures must be a list of numbers"):
        open_sequence(path)


def test_synth_clip_folder(tmp_path):
    from tests.clipfactory import write_translation_clip

    clip = write_translation_clip(tmp_path / "c", frames=6)
    seq = open_sequence(clip)
    assert seq.kind == "clip" and seq.hdr_loader is not None and seq.long.tolist() == \
        [False, True] * 3


def raw_frame(rgb, exposure, cam, rng, cfg, black=64, white=4095):
    """A synthetic RAW exposure (the synthesis's sensor) as 12-bit codes."""
    m = sensor(mosaic(unprocess(rgb * exposure, cam)), cam, rng, cfg)
    return m, (np.round(m * (white - black)) + black).astype(np.uint16)


def test_dng_burst_develops_like_the_synthesis(tmp_path):
    rng = np.random.default_rng(0)
    cfg = DegradeConfig(bits=12)
    cam = sample_camera(rng, cfg)
    xyz2cam = np.einsum("k,kij->ij", cam.ccm_weights, np.array(list(XYZ_TO_CAM.values())) / 1e4)
    rgb = scene(32, 40)
    times = [1 / 800, 1 / 100] * 3
    ref = None
    for i, t in enumerate(times):
        m, codes = raw_frame(rgb, t * 800, cam, rng, cfg)
        write_dng(tmp_path / f"IMG_{i:04d}.dng", codes, black_level=64, white_level=4095,
                  exposure_time=t, iso=400, wb_gains=cam.wb, color_matrix=xyz2cam)
        if i == 1:
            ref = process(m, cam, cfg)
    seq = open_sequence(tmp_path)
    assert seq.kind == "raw" and seq.info["cfa"] == "RGGB" and seq.info["iso"] == [400.0] * 6
    assert seq.long.tolist() == [False, True] * 3
    assert seq.exposure_ratio == pytest.approx(8.0, rel=1e-4)
    dev = seq.frame(1)
    # same pipeline as degrade.process; differences are the DNG's 4-decimal matrix and the
    # 12-bit re-quantisation of the codes
    assert np.abs(dev - ref).mean() < 1e-3 and np.abs(dev - ref).max() < 0.03


@pytest.mark.parametrize("cfa", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_demosaic_follows_the_cfa(cfa):
    colour = np.array([0.6, 0.3, 0.1])
    chan = {"R": 0, "G": 1, "B": 2}
    x = np.zeros((16, 16))
    for k, c in enumerate(cfa):
        x[k // 2::2, k % 2::2] = colour[chan[c]]
    rgb = demosaic_cfa(x, cfa)
    assert np.allclose(rgb[4:-4, 4:-4], colour, atol=2e-3)


def test_corrupt_dng_fails_at_open(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        codes = rng.integers(64, 4000, (32, 40)).astype(np.uint16)
        write_dng(tmp_path / f"d{i}.dng", codes, black_level=64, white_level=4095,
                  exposure_time=1 / 100 if i % 2 else 1 / 800, iso=100)
    data = (tmp_path / "d2.dng").read_bytes()
    (tmp_path / "d2.dng").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="d2.dng is not a RAW file"):
        open_sequence(tmp_path)


def test_dng_without_exposure_uses_sidecar(tmp_path):
    codes = np.full((32, 40), 1000, np.uint16)
    for i in range(3):
        write_dng(tmp_path / f"d{i}.dng", codes, white_level=4095)
    with pytest.raises(ValueError, match="no exposure information"):
        open_sequence(tmp_path)
    (tmp_path / "exposures.json").write_text(json.dumps({"d0.dng": 1, "d1.dng": 4, "d2.dng": 1}))
    assert open_sequence(tmp_path).info["exposure_source"] == "exposures.json"
    # some files with metadata, one without: the message names the one
    (tmp_path / "exposures.json").unlink()
    for i, t in ((0, 0.01), (2, 0.01)):
        write_dng(tmp_path / f"d{i}.dng", codes, white_level=4095, exposure_time=t, iso=100)
    with pytest.raises(ValueError, match="1 of 3 files carry no exposure metadata, first d1"):
        open_sequence(tmp_path)


def _errors(tmp_path, case):
    if case == "mixed resolutions":
        write_pngs(tmp_path)
        write_png16(tmp_path / "frame_003.png", np.zeros((32, 48, 3)))
    elif case == "does not alternate":
        write_pngs(tmp_path, exposures=[1, 8, 8, 1, 8, 1])
    elif case == "not a readable PNG":
        write_pngs(tmp_path)
        (tmp_path / "frame_002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "no exposure information":
        write_pngs(tmp_path, sidecar=False)
    elif case == "mixed bit depths":
        write_pngs(tmp_path)
        cv2.imwrite(str(tmp_path / "frame_001.png"), np.zeros((32, 40, 3), np.uint8))
    elif case == "float32 TIFF":
        tmp_path.mkdir()
        for i in range(3):
            tifffile.imwrite(tmp_path / f"{i}.tif", np.zeros((32, 40, 3), np.float32),
                             photometric="rgb")
    elif case == "greyscale PNG":
        write_pngs(tmp_path)
        cv2.imwrite(str(tmp_path / "frame_004.png"), np.zeros((32, 40), np.uint16))
    elif case == "same exposure":
        write_pngs(tmp_path, exposures=[2.0] * 4)
    elif case == "gives no exposure for":
        write_pngs(tmp_path)
        (tmp_path / "exposures.json").write_text(json.dumps({"frame_000.png": 1}))
    elif case == "exposures must be numbers":   # json's true would read as 1.0
        write_pngs(tmp_path, exposures=[True, 8, 1, 8])
    elif case == "invalid JSON":
        write_pngs(tmp_path)
        (tmp_path / "exposures.json").write_bytes(b"\xff\xfe not utf-8")
    elif case.startswith("clip:"):
        from tests.clipfactory import write_translation_clip

        clip = write_translation_clip(tmp_path, frames=6)
        meta = json.loads((clip / "meta.json").read_text())
        if case == "clip: 8-bit PNG":
            cv2.imwrite(str(clip / "ldr" / "000003.png"),
                        np.zeros((meta["height"], meta["width"], 3), np.uint8))
        elif case == "clip: format 'list'":
            (clip / "meta.json").write_text(json.dumps([1, 2]))
        elif case == "clip: does not alternate":
            meta["exposures"] = [1.0, 8.0, 8.0, 1.0, 8.0, 1.0]
            (clip / "meta.json").write_text(json.dumps(meta))
        elif case == "clip: must be a positive integer":
            meta["height"] = str(meta["height"])
            (clip / "meta.json").write_text(json.dumps(meta))
        elif case == "clip: ground truth of 8x8":
            from dealthdr.data.io import write_exr

            write_exr(clip / "hdr" / "000004.exr", np.ones((8, 8, 3), np.float32))


CASES = ["mixed resolutions", "does not alternate", "not a readable PNG",
         "no exposure information", "mixed bit depths", "float32 TIFF", "greyscale PNG",
         "same exposure", "gives no exposure for", "exposures must be numbers", "invalid JSON",
         "clip: 8-bit PNG", "clip: format 'list'", "clip: does not alternate",
         "clip: must be a positive integer", "clip: ground truth of 8x8"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_clear_error(tmp_path, case):
    _errors(tmp_path / "in", case)
    with pytest.raises(ValueError, match=case.removeprefix("clip: ")):
        open_sequence(tmp_path / "in")


@pytest.mark.parametrize("case", ["does not alternate", "mixed resolutions"])
def test_cli_exits_2_and_writes_nothing(tmp_path, capsys, case):
    _errors(tmp_path / "in", case)
    code = main(["reconstruct", "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and case in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
