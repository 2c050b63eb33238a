"""Band matching and radiometry on real Sentinel-2 / Landsat 7 files (../shared/data/real) and written rasters."""

from pathlib import Path

import numpy as np
import pytest
import rasterio

from model_core.bands import (DEFAULT_MODEL_BANDS, Band, RasterBandInfo, canonical_name, match_bands,
                              parse_band_mapping, Radiometry, resolve_radiometry)
from model_core.errors import BandMismatchError, InputError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is not on this machine")


def info_of(path):
    with rasterio.open(path) as src:
        return RasterBandInfo.from_dataset(src)


@needs_real
@pytest.mark.parametrize("name,expected", [
    ("s2_l1c_virginia_20m_10band.tif", [1, 2, 3, 7, 9, 10]),      # B02 B03 B04 B05 B06 B07 B08 B8A B11 B12
    ("s2_l1c_brandenburg_10m_10band.tif", [1, 2, 3, 7, 9, 10]),
    ("s2_patagonia_10m_6band.tif", [1, 2, 3, 4, 5, 6]),
])
def test_real_sentinel2_bands_match_by_name(name, expected):
    assert match_bands(info_of(REAL / name), DEFAULT_MODEL_BANDS) == expected


@needs_real
def test_real_landsat7_names_read_as_landsat_not_sentinel2():
    """Landsat 7 "B4" is NIR (835 nm), not Sentinel-2 B04 (red); B5 is SWIR1. The 5-band file has no SWIR2."""
    info = info_of(REAL / "l7_raleigh_5band.tif")
    assert info.sensor == "landsat457"
    assert match_bands(info, DEFAULT_MODEL_BANDS[:5]) == [1, 2, 3, 4, 5]
    with pytest.raises(BandMismatchError, match=r"lacks band B12 \(2190 nm\).*such as B02=1,.*\(--bands\)"):
        match_bands(info, DEFAULT_MODEL_BANDS)


@needs_real
def test_real_unnamed_six_band_landsat_needs_a_mapping():
    info = info_of(REAL / "l7_olinda_6band.tif")
    with pytest.raises(BandMismatchError, match="carry no name or wavelength.*--bands"):
        match_bands(info, DEFAULT_MODEL_BANDS)
    mapping = parse_band_mapping("B02=1,B03=2,B04=3,B08=4,B11=5,B12=6")
    assert match_bands(info, DEFAULT_MODEL_BANDS, mapping) == [1, 2, 3, 4, 5, 6]


@needs_real
@pytest.mark.parametrize("name", ["s2_l1c_virginia_20m_10band.tif", "s2_l1c_brandenburg_10m_10band.tif",
                                  "s2_patagonia_10m_6band.tif"])
def test_real_sentinel2_without_offset_is_not_taken_for_offset(name):
    with rasterio.open(REAL / name) as src:
        radiometry, reason = resolve_radiometry(src)
    assert (radiometry.scale, radiometry.offset) == (1e-4, 0.0), reason


@needs_real
def test_real_sentinel2_with_added_offset_is_detected(tmp_path):
    """The same real scene stored as processing baseline >= 04.00 stores it (DN + 1000, no metadata)."""
    with rasterio.open(REAL / "s2_l1c_virginia_20m_10band.tif") as src:
        profile, data = src.profile, src.read()
    path = tmp_path / "offset.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data + 1000)
    with rasterio.open(path) as src:
        radiometry, reason = resolve_radiometry(src)
    assert radiometry.scale == 1e-4 and radiometry.offset == pytest.approx(-0.1) and "+1000" in reason


@needs_real
def test_real_uint8_landsat_is_scaled_to_unit_range():
    with rasterio.open(REAL / "l7_olinda_6band.tif") as src:
        radiometry, reason = resolve_radiometry(src)
    assert radiometry.scale == pytest.approx(1 / 255) and "8-bit" in reason


def write(path, count, dtype="uint16", descriptions=(), band_tags=(), tags=None, value=500, scales=None,
          offsets=None):
    data = np.full((count, 8, 8), value, dtype=dtype)
    data[:, 0, 0] = np.asarray(value, dtype) * 4
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=count, dtype=dtype, crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5800000, 10, 10)) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions, start=1):
            dst.set_band_description(i, text)
        for i, band in enumerate(band_tags, start=1):
            dst.update_tags(i, **band)
        dst.update_tags(**(tags or {}))
        if scales:
            dst.scales, dst.offsets = scales, offsets
    return path


@pytest.mark.parametrize("count,expected", [
    (12, [2, 3, 4, 8, 11, 12]),   # L2A: B01..B08, B8A, B09, B11, B12
    (13, [2, 3, 4, 8, 12, 13]),   # L1C: with B10
    (7, [2, 3, 4, 5, 6, 7]),      # Landsat 8/9 SR_B1..SR_B7
    (11, [2, 3, 4, 5, 6, 7]),     # Landsat 8/9 Level-1
])
def test_unnamed_standard_layouts_match_by_count(tmp_path, count, expected):
    assert match_bands(info_of(write(tmp_path / "r.tif", count)), DEFAULT_MODEL_BANDS) == expected


def test_landsat8_collection2_names(tmp_path):
    path = write(tmp_path / "lc08.tif", 7, descriptions=[f"SR_B{i}" for i in range(1, 8)],
                 tags={"SPACECRAFT_ID": "x", "SENSOR": "LANDSAT_8 OLI_TIRS"})
    assert match_bands(info_of(path), DEFAULT_MODEL_BANDS) == [2, 3, 4, 5, 6, 7]


def test_common_names_and_wavelength_tags(tmp_path):
    names = write(tmp_path / "names.tif", 6, descriptions=["swir22", "Blue", "green", "Red", "NIR", "swir16"])
    assert match_bands(info_of(names), DEFAULT_MODEL_BANDS) == [2, 3, 4, 5, 6, 1]
    waves = write(tmp_path / "waves.tif", 6, band_tags=[{"wavelength": w} for w in
                                                         ("0.49", "0.56", "0.665", "0.842", "1.61", "2.19")])
    assert match_bands(info_of(waves), DEFAULT_MODEL_BANDS) == [1, 2, 3, 4, 5, 6]


def test_b8a_is_not_taken_for_b08_when_both_exist(tmp_path):
    path = write(tmp_path / "r.tif", 7, descriptions=["B02", "B03", "B04", "B8A", "B08", "B11", "B12"])
    assert match_bands(info_of(path), DEFAULT_MODEL_BANDS) == [1, 2, 3, 5, 6, 7]
    near = write(tmp_path / "n.tif", 6, descriptions=["B02", "B03", "B04", "B8A", "B11", "B12"])
    assert match_bands(info_of(near), DEFAULT_MODEL_BANDS)[3] == 4  # 865 nm stands in for 842 nm


def test_red_edge_does_not_stand_in_for_red(tmp_path):
    path = write(tmp_path / "r.tif", 3, descriptions=["B02", "B03", "B05"])
    with pytest.raises(BandMismatchError, match=r"B04 \(665 nm\)"):
        match_bands(info_of(path), [Band("B02", 490), Band("B04", 665)])


def test_descriptions_it_does_not_know_are_quoted_in_the_mismatch(tmp_path):
    info = info_of(write(tmp_path / "r.tif", 5, descriptions=["band_a", "b", "c", "d", "e"]))
    with pytest.raises(BandMismatchError, match=r"no name or wavelength it recognises \(described as band_a, b, c, "
                                                r"d, e\) and 5 is not a standard"):
        match_bands(info, DEFAULT_MODEL_BANDS)


def test_mapping_overrides_and_is_checked(tmp_path):
    info = info_of(write(tmp_path / "r.tif", 12))
    assert match_bands(info, DEFAULT_MODEL_BANDS, {"B02": 4, "B04": 2})[:3] == [4, 3, 2]
    with pytest.raises(BandMismatchError, match="feeds raster band 4 to B02, B04; give each model band its own"):
        match_bands(info, DEFAULT_MODEL_BANDS, {"B02": 4})  # B04 still found in band 4 of the standard layout
    with pytest.raises(BandMismatchError, match="feeds raster band 2 to B02, B03, B04, B08, B11, B12"):
        match_bands(info, DEFAULT_MODEL_BANDS, {name: 2 for name in ("B02", "B03", "B04", "B08", "B11", "B12")})
    with pytest.raises(BandMismatchError, match="B12=13: the raster has 12 bands"):
        match_bands(info, DEFAULT_MODEL_BANDS, {"B12": 13})


@pytest.mark.parametrize("text,message", [
    ("B02:1", "is not NAME=BAND"), ("B02=x", "is not NAME=BAND"), ("B02=0", "is not NAME=BAND"),
    ("foo=1", "'foo' is not a band name"), ("B2=1,B02=2", "names B02 twice"), (" , ", "is empty"),
])
def test_parse_band_mapping_refuses_malformed_text(text, message):
    with pytest.raises(InputError, match=message):
        parse_band_mapping(text)


def test_parse_band_mapping_normalises_names():
    assert parse_band_mapping("B2=1, b8a=2; swir16=3") == {"B02": 1, "B8A": 2, "B11": 3}
    assert canonical_name("band 4", "landsat457")[0] == "B08"


@pytest.mark.parametrize("tags,scale,offset", [
    ({"BOA_ADD_OFFSET": "-1000", "BOA_QUANTIFICATION_VALUE": "10000"}, 1e-4, -0.1),
    ({"RADIO_ADD_OFFSET": "-1000"}, 1e-4, -0.1),
    ({"BOA_ADD_OFFSET": "0", "BOA_QUANTIFICATION_VALUE": "10000"}, 1e-4, 0.0),
])
def test_sentinel2_metadata_tags(tmp_path, tags, scale, offset):
    with rasterio.open(write(tmp_path / "r.tif", 6, tags=tags, value=3000)) as src:
        radiometry, reason = resolve_radiometry(src)
    assert (radiometry.scale, radiometry.offset) == pytest.approx((scale, offset)) and "metadata" in reason


def test_file_scale_offset_and_explicit_values_win(tmp_path):
    path = write(tmp_path / "r.tif", 2, scales=[2e-5, 2e-5], offsets=[-0.2, -0.2], value=3000)
    with rasterio.open(path) as src:
        radiometry = resolve_radiometry(src)[0]
        assert (radiometry.scale, radiometry.offset) == pytest.approx((2e-5, -0.2))
        radiometry, reason = resolve_radiometry(src, explicit_offset=0.0)
    assert radiometry.offset == 0.0 and reason == "given"


def test_a_scale_that_cannot_give_reflectance_is_refused(tmp_path):
    with rasterio.open(write(tmp_path / "r.tif", 2, value=3000)) as src:
        for scale, offset in ((0.0, None), (-1e-4, 0.0), (1e-4, float("nan"))):
            with pytest.raises(InputError, match=r"cannot turn DN into reflectance .*the scale must be above 0.*"
                                                 r"--scale 0.0001 --offset -0.1"):
                resolve_radiometry(src, explicit_scale=scale, explicit_offset=offset)
    with rasterio.open(write(tmp_path / "zero.tif", 2, scales=[0.0, 0.0], offsets=[0.0, 0.0], value=3000)) as src:
        with pytest.raises(InputError, match=r"zero.tif declares scale 0 and offset 0, .*--scale, --offset"):
            resolve_radiometry(src)


def test_float_reflectance_is_kept(tmp_path):
    with rasterio.open(write(tmp_path / "r.tif", 6, dtype="float32", value=0.2)) as src:
        assert resolve_radiometry(src)[0] == Radiometry(1.0, 0.0)


def test_only_the_bands_the_model_reads_need_one_scale(tmp_path):
    """Landsat 8/9 Collection 2 Level-2 stacks carry SR_B1..SR_B7 (x 2.75e-5 - 0.2) and ST_B10 (x 0.00341802 + 149):
    the thermal band's own scale must not stop a model that reads only the reflective bands."""
    names = [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10"]
    path = write(tmp_path / "lc09_l2.tif", 8, descriptions=names, value=12000,
                 scales=[2.75e-5] * 7 + [0.00341802], offsets=[-0.2] * 7 + [149.0])
    with rasterio.open(path) as src:
        bands = match_bands(RasterBandInfo.from_dataset(src), DEFAULT_MODEL_BANDS)
        assert bands == [2, 3, 4, 5, 6, 7]
        radiometry, reason = resolve_radiometry(src, bands=bands)
        assert (radiometry.scale, radiometry.offset) == pytest.approx((2.75e-5, -0.2)) and "metadata" in reason
        with pytest.raises(InputError, match=r"different scale/offset per band .* bands \[2, 3, 4, 5, 6, 7, 8\].*"
                                             r"--scale, --offset"):
            resolve_radiometry(src, bands=bands + [8])


@pytest.mark.parametrize("names,expected", [
    ([f"SR_B{i}" for i in range(1, 8)], "landsat89"),                 # e.g. an Earth Engine LC09/C02/T1_L2 export
    ([f"SR_B{i}" for i in (1, 2, 3, 4, 5, 7)] + ["ST_B6"], "landsat457"),  # LE07/LT05 C02 L2
])
def test_collection2_level2_names_without_metadata(tmp_path, names, expected):
    """No sensor tag and no scale metadata: the SR_B* names say the sensor (so SR_B5 is not Sentinel-2 B05) and
    the Collection 2 Level-2 scaling (DN 7273 is reflectance 0)."""
    path = write(tmp_path / "l2.tif", len(names), descriptions=names, value=9000)
    with rasterio.open(path) as src:
        info = RasterBandInfo.from_dataset(src)
        bands = match_bands(info, DEFAULT_MODEL_BANDS)
        radiometry, reason = resolve_radiometry(src, bands=bands)
    assert info.sensor == expected
    assert [names[i - 1] for i in bands] == (["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
                                             if expected == "landsat89" else
                                             ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"])
    assert radiometry == Radiometry(2.75e-5, -0.2) and "Landsat Collection 2 Level-2" in reason


def test_values_too_bright_for_reflectance_x_10000_are_refused(tmp_path):
    """An unnamed Landsat Level-2 stack (reflectance 0 at DN 7273) would read as reflectance 0.6-4 x 10000."""
    with rasterio.open(write(tmp_path / "r.tif", 7, value=7400)) as src:
        with pytest.raises(InputError, match=r"darker than 7400 DN.*too bright.*--scale, --offset.*0\.0000275"):
            resolve_radiometry(src)


def test_offset_guess_reads_only_the_models_bands(tmp_path):
    """An Earth Engine style export of L2A with the offset and its scene classification band (SCL, values 0-11):
    the class band must not pass for dark pixels that rule the offset out."""
    names = ["B2", "B3", "B4", "B8", "B11", "B12", "SCL"]
    path = write(tmp_path / "s2_scl.tif", 7, descriptions=names, value=2500)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((8, 8), 4, np.uint16), 7)
    with rasterio.open(path) as src:
        bands = match_bands(RasterBandInfo.from_dataset(src), DEFAULT_MODEL_BANDS)
        radiometry, reason = resolve_radiometry(src, bands=bands)
    assert bands == [1, 2, 3, 4, 5, 6]
    assert radiometry.offset == pytest.approx(-0.1) and "+1000" in reason


def test_offset_guess_skips_undeclared_zero_fill(tmp_path):
    """L2A with the offset, exported without its nodata value: the fill outside the swath is not a dark pixel."""
    path = write(tmp_path / "swath.tif", 6, descriptions=[b.name for b in DEFAULT_MODEL_BANDS], value=2500)
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, 5:] = 0
        dst.write(data)
    with rasterio.open(path) as src:
        radiometry, reason = resolve_radiometry(src)
    assert radiometry.offset == pytest.approx(-0.1) and "+1000" in reason
