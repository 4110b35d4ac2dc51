"""Issue 8: the DNG writer, RAW noise calibration, darktable profiles, synthesis with a profile."""
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
