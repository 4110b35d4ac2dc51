"""The DNG writer, RAW noise calibration, darktable profiles, synthesis with a profile."""
import json
from pathlib import Path

import numpy as np
import pytest

from dealthdr.data.dng import read_raw, write_dng


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_dng_reads_back_in_rawpy(tmp_path, cfa):
    import rawpy

    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 16384, (40, 62)).astype(np.uint16)
    black = (512, 510, 508, 514)  # per 2x2 position, row-major
    path = write_dng(tmp_path / "a.dng", mosaic, black_level=black, white_level=16383, cfa=cfa,
                     exposure_time=1 / 250, iso=800, wb_gains=(2.0, 1.0, 1.5))
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image, mosaic)
        assert raw.white_level == 16383
        desc = raw.color_desc.decode()
        got = "".join(desc[c] for c in raw.raw_pattern.ravel()).upper()
        assert got == cfa
        # black_level_per_channel is indexed by colour (R, G, B, G2), not by position.
        by_pos = [raw.black_level_per_channel[c] for c in raw.raw_pattern.ravel()]
        assert by_pos == list(black)
        np.testing.assert_allclose(raw.camera_whitebalance[:3], (2.0, 1.0, 1.5), rtol=1e-6)
        assert raw.other.iso_speed == 800
        assert raw.other.shutter_speed == pytest.approx(1 / 250, rel=1e-6)
        # Default colour matrix: the camera records linear sRGB.
        np.testing.assert_allclose(raw.color_matrix[:, :3], np.eye(3), atol=2e-3)
    img = read_raw(path)
    assert img.cfa == cfa and img.white_level == 16383
    np.testing.assert_array_equal(img.mosaic, mosaic)
    np.testing.assert_array_equal(img.black_level, np.reshape(black, (2, 2)))
    assert img.iso == 800 and img.exposure_time == pytest.approx(1 / 250)
    x = img.normalised()
    assert x[0, 0] == pytest.approx((mosaic[0, 0] - black[0]) / (16383 - black[0]))
    assert x[1, 1] == pytest.approx((mosaic[1, 1] - black[3]) / (16383 - black[3]))


def test_dng_iso_above_65535_and_missing_metadata(tmp_path):
    mosaic = np.full((22, 24), 1000, np.uint16)
    img = read_raw(write_dng(tmp_path / "hi.dng", mosaic, iso=102400, exposure_time=2.0))
    assert img.iso == 102400 and img.exposure_time == 2.0  # LibRaw alone says 65535
    img = read_raw(write_dng(tmp_path / "none.dng", mosaic))
    assert img.iso is None and img.exposure_time is None


@pytest.mark.parametrize("kwargs,message", [
    ({"mosaic": np.zeros((23, 24), np.uint16)}, "even sides"),
    ({"mosaic": np.zeros((20, 24), np.uint16)}, "at least 22"),
    ({"mosaic": np.zeros((24, 24), np.float32)}, "uint16"),
    ({"cfa": "RGBG"}, "cfa"),
    ({"black_level": 70000}, "black_level < white_level"),
    ({"black_level": (1, 2, 3)}, "4"),
    ({"exposure_time": 0.0}, "exposure_time"),
    ({"wb_gains": (1, 0, 1)}, "wb_gains"),
])
def test_dng_writer_rejects_bad_input(tmp_path, kwargs, message):
    args = {"mosaic": np.zeros((24, 24), np.uint16), **kwargs}
    with pytest.raises(ValueError, match=message):
        write_dng(tmp_path / "bad.dng", **args)
    assert not list(tmp_path.iterdir())


def test_read_raw_rejects_non_raw(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="not a RAW file"):
        read_raw(png)
    good = write_dng(tmp_path / "t.dng", np.zeros((64, 64), np.uint16), iso=100)
    cut = tmp_path / "cut.dng"
    cut.write_bytes(good.read_bytes()[:600])  # header intact, pixels missing
    with pytest.raises(ValueError, match="not a RAW file"):
        read_raw(cut)
    with pytest.raises(FileNotFoundError):
        read_raw(tmp_path / "missing.dng")


# ------------------------------------------------------------------ RAW noise calibration

# lambda_shot proportional to ISO (the paper's day value at ISO 100), lambda_read growing faster.
TRUE = {100: (3.23e-4, 2.67e-6), 800: (2.584e-3, 4.0e-5), 3200: (1.0336e-2, 2.4e-4)}


@pytest.mark.parametrize("frames", [2, 1], ids=["burst", "single"])
def test_calibration_recovers_lambdas_from_dngs(tmp_path, frames):
    from dealthdr.calib.noise import main, write_synthetic_raws

    raw = tmp_path / "raw"
    write_synthetic_raws(raw, TRUE, frames=frames, size=(384, 512), black=2048, seed=frames)
    (raw / "notes.txt").write_text("sidecars are skipped")
    out = tmp_path / "prof.json"
    assert main(["--raw", str(raw), "--out", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    prof = json.loads(out.read_text())
    assert prof["format"] == "dealthdr-noise-profile/1" and prof["iso_range"] == [100, 3200]
    for e in prof["isos"]:
        shot, read = TRUE[int(e["iso"])]
        assert e["extra"]["method"] == (["burst"] if frames == 2 else ["single"])
        assert e["lambda_shot"] == pytest.approx(shot, rel=0.1)
        assert e["lambda_read"] == pytest.approx(read, rel=0.1)
        for c in "RGB":
            assert e["channels"][c]["lambda_shot"] == pytest.approx(shot, rel=0.1)
            assert e["channels"][c]["lambda_read"] == pytest.approx(read, rel=0.15)
    fit = prof["fit"]
    assert fit["shot_slope"] == pytest.approx(1.0, abs=0.05)  # lambda_shot ~ ISO
    true_slope = np.polyfit(np.log([v[0] for v in TRUE.values()]),
                            np.log([v[1] for v in TRUE.values()]), 1)[0]
    assert fit["read_slope"] == pytest.approx(true_slope, abs=0.15)


def _assert_cli_fails(tmp_path, args, message, capsys):
    from dealthdr.calib.noise import main

    out = tmp_path / "out" / "prof.json"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_calibration_bad_input_is_a_clear_error(tmp_path, capsys):
    from dealthdr.calib.noise import write_synthetic_raws

    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_cli_fails(tmp_path, ["--raw", str(empty)], "no RAW files", capsys)
    _assert_cli_fails(tmp_path, ["--raw", str(tmp_path / "nope")], "not found", capsys)
    bad = tmp_path / "bad"
    good = write_synthetic_raws(bad, {100: TRUE[100]}, frames=1, size=(64, 64))[0]
    (bad / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    _assert_cli_fails(tmp_path, ["--raw", str(bad)], "photo.png is not a RAW file", capsys)
    (bad / "photo.png").unlink()
    (bad / "cut.dng").write_bytes(good.read_bytes()[:700])
    _assert_cli_fails(tmp_path, ["--raw", str(bad)], "cut.dng is not a RAW file", capsys)
    (bad / "cut.dng").unlink()
    write_dng(bad / "noiso.dng", np.full((64, 64), 3000, np.uint16), 512, 16383)
    _assert_cli_fails(tmp_path, ["--raw", str(bad)], "noiso.dng: no ISO", capsys)
    (bad / "noiso.dng").unlink()
    _assert_cli_fails(tmp_path, ["--raw", str(bad), "--method", "burst"], "single frame",
                      capsys)


def test_calibration_help_explains_every_flag(capsys):
    from dealthdr.calib.noise import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--raw", "--out", "--plot", "--camera", "--method", "--bins", "--block",
                 "--flat-quantile", "--max-level"):
        assert flag in text


# ------------------------------------------------------------------ darktable profiles

def _darktable_file(tmp_path) -> Path:
    """A small file in darktable's format: a skipped duplicate, a negative b, one bad entry."""
    model = {"comment": "test camera", "model": "TestCam 1", "profiles": [
        {"name": "iso 100", "iso": 100, "a": [2.0e-5, 1.0e-5, 1.5e-5], "b": [2e-8, 1e-8, 2e-8]},
        {"name": "iso 100 old", "iso": 100, "a": [9.0, 9.0, 9.0], "b": [9.0, 9.0, 9.0],
         "skip": True},
        {"name": "iso 400", "iso": 400, "a": [8.0e-5, 4.0e-5, 6.0e-5], "b": [9e-8, 6e-8, 9e-8]},
        {"name": "iso 1600", "iso": 1600, "a": [3.2e-4, 1.6e-4, 2.4e-4], "b": [9e-7, 5e-7, 8e-7]},
        {"name": "iso 3200", "iso": 3200, "a": [6.4e-4, 3.2e-4, 4.8e-4],
         "b": [-1e-7, -2e-7, -1e-7]},
        {"name": "iso 6400", "iso": 6400, "a": [1e-3, -1e-5, 1e-3], "b": [1e-6, 1e-6, 1e-6]},
    ]}
    path = tmp_path / "noiseprofiles.json"
    path.write_text(json.dumps({"version": 0, "noiseprofiles": [
        {"maker": "Acme", "models": [model]}]}))
    return path


def test_darktable_entry_converts_and_round_trips(tmp_path, monkeypatch):
    from dealthdr.calib.darktable import main as dt_main
    from dealthdr.data import noise_profile as npf

    src = _darktable_file(tmp_path)
    monkeypatch.setenv(npf.DARKTABLE_ENV, str(src))
    prof = npf.resolve_profile("acme testcam 1")
    assert prof.camera == "Acme TestCam 1" and [e.iso for e in prof.entries] == [100, 400, 1600,
                                                                                  3200]
    e100 = prof.entries[0]
    assert e100.lambda_shot == pytest.approx(1.0e-5 / npf.DARKTABLE_KAPPA)
    assert e100.lambda_read == pytest.approx(1e-8 / npf.DARKTABLE_KAPPA)
    # R carries the profiling shot's white balance: a_R / a_G = gain * kappa_RB / kappa_G.
    assert e100.extra["implied_wb_gains_rb"][0] == pytest.approx(
        2.0 * npf.DARKTABLE_KAPPA / npf.DARKTABLE_KAPPA_RB)
    e3200 = prof.entries[3]
    assert e3200.read_clamped and e3200.lambda_read == 0.0
    assert prof.fit.isos_used_for_read == 3 and prof.fit.shot_slope == pytest.approx(1.0)
    # Our JSON and darktable's format both round-trip.
    ours = tmp_path / "ours.json"
    assert dt_main(["import", "Acme TestCam 1", "--out", str(ours)]) == 0
    again = npf.read_profile(ours)
    assert again.to_dict() == prof.to_dict()
    back = npf.to_darktable(prof)["profiles"]
    orig = [p for p in json.loads(src.read_text())["noiseprofiles"][0]["models"][0]["profiles"]
            if not p.get("skip") and p["a"][1] > 0]
    for b, o in zip(back, orig):
        np.testing.assert_allclose(b["a"], o["a"], rtol=1e-12)
        np.testing.assert_allclose(b["b"], o["b"], rtol=1e-12)
    exported = tmp_path / "dt.json"
    assert dt_main(["export", str(ours), "--maker", "Acme", "--out", str(exported)]) == 0
    monkeypatch.setenv(npf.DARKTABLE_ENV, str(exported))
    reimported = npf.resolve_profile("Acme Acme TestCam 1")
    assert [e.lambda_shot for e in reimported.entries] == pytest.approx(
        [e.lambda_shot for e in prof.entries], rel=1e-12)


def test_darktable_errors(tmp_path, monkeypatch, capsys):
    from dealthdr.data import noise_profile as npf

    monkeypatch.setenv(npf.DARKTABLE_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundError, match="apt-get download darktable"):
        npf.resolve_profile("Sony DSC-RX100M7")
    with pytest.raises(FileNotFoundError, match="noise profile not found"):
        npf.resolve_profile(str(tmp_path / "missing.json"))
    monkeypatch.setenv(npf.DARKTABLE_ENV, str(_darktable_file(tmp_path)))
    with pytest.raises(ValueError, match="close matches: Acme TestCam 1"):
        npf.resolve_profile("Acme TestCam")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"format\": \"something else\"}")
    with pytest.raises(ValueError, match="not a dealthdr noise profile"):
        npf.resolve_profile(str(bad))


def test_kappa_constant_matches_its_simulation():
    from dealthdr.calib.darktable import derive_kappa
    from dealthdr.data.noise_profile import DARKTABLE_KAPPA, DARKTABLE_KAPPA_RB

    k = derive_kappa(size=512)
    assert k[1] == pytest.approx(DARKTABLE_KAPPA, rel=0.03)
    assert k[[0, 2]] == pytest.approx([DARKTABLE_KAPPA_RB] * 2, rel=0.03)


# ------------------------------------------------------------------ synthesis with a profile

def test_synth_with_profile_is_deterministic_and_its_noise_matches(tmp_path, monkeypatch):
    from dataclasses import replace

    from dealthdr.calib.noise import clip_raw_noise
    from dealthdr.cli import main as cli_main
    from dealthdr.data.degrade import DegradeConfig
    from dealthdr.data.noise_profile import DARKTABLE_ENV, resolve_profile
    from dealthdr.data.synth import BUNDLED_HDRI, SynthConfig, load_panoramas, synth_clip

    monkeypatch.setenv(DARKTABLE_ENV, str(_darktable_file(tmp_path)))
    args = ["synth", "--clips", "2", "--frames", "6", "--size", "48x64", "--subframes", "8",
            "--seed", "4", "--noise-profile", "Acme TestCam 1"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 2 * 19
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    meta = json.loads((tmp_path / "a" / "clip_000000" / "meta.json").read_text())
    assert meta["noise"]["profile"]["camera"] == "Acme TestCam 1"
    assert 100 <= meta["noise"]["iso"] <= 3200
    assert meta["synth"]["noise_profile"]["camera"] == "Acme TestCam 1"

    prof = resolve_profile("Acme TestCam 1")
    cfg = SynthConfig(frames=6, height=96, width=128, degrade=DegradeConfig(subframes=8))
    src = load_panoramas(BUNDLED_HDRI, "train", cfg)
    clean_cfg = replace(cfg, degrade=replace(cfg.degrade, noise_scale=0.0))
    noisy = synth_clip(cfg, src, 5, 0, prof)
    clean = synth_clip(clean_cfg, src, 5, 0, prof)
    n = noisy.meta["noise"]
    assert n == clean.meta["noise"] and n["lambda_shot"] == pytest.approx(
        prof.fit.shot(n["iso"]))
    x, d = clip_raw_noise(noisy.ldr, clean.ldr, noisy.meta)
    quant = 2 * (1 / 1023) ** 2 / 12
    sel = (x > 0.05) & (x < 0.5)
    edges = np.quantile(x[sel], np.linspace(0, 1, 6))
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = sel & (x >= lo) & (x < hi)
        pred = n["lambda_read"] + n["lambda_shot"] * x[b].mean() + quant
        assert d[b].var() == pytest.approx(pred, rel=0.12)
