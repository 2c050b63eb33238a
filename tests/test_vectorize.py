"""vectorize: mask -> cleaned footprint polygons with true areas, in a GeoPackage."""

import math

import numpy as np
import pytest
import rasterio
import shapely
from osgeo import ogr
from rasterio.crs import CRS
from rasterio.transform import from_origin

from model_core.errors import Cancelled
from model_core.rasters import UINT8_NODATA
from model_core.vectorize import FOOTPRINT_LAYER, polygonize, write_polygons_gpkg


def ellipsoidal_quadrangle_m2(lon1, lon2, lat1, lat2):
    """Area of a longitude/latitude rectangle on the WGS84 ellipsoid (closed form via authalic latitude)."""
    a, f = 6378137.0, 1 / 298.257223563
    b, e = a * (1 - f), math.sqrt(2 * f - f * f)

    def q(lat):
        s = math.sin(math.radians(lat))
        return s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)
    return abs(math.radians(lon2 - lon1) * b * b / 2 * (q(lat2) - q(lat1)))


def read_layer(path):
    dataset = ogr.Open(str(path))
    layer = dataset.GetLayerByName(FOOTPRINT_LAYER)
    fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    rows = [(shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb())), {name: f.GetField(name) for name in fields})
            for f in layer]
    srs = layer.GetSpatialRef()
    return fields, rows, srs


@pytest.fixture
def footprint_rasters(make_raster):
    """Write a mask and a matching uint8 probability raster; returns (mask_path, prob_path)."""
    def make(mask, prob=None, **grid):
        if prob is None:
            prob = np.where(mask == 1, 200, 20).astype(np.uint8)
            prob[mask == UINT8_NODATA] = UINT8_NODATA
        return (make_raster("mask.tif", mask.astype(np.uint8), nodata=UINT8_NODATA, **grid),
                make_raster("prob.tif", prob.astype(np.uint8), nodata=UINT8_NODATA, **grid))
    return make


def test_geographic_square_has_its_true_ellipsoidal_area(footprint_rasters, tmp_path):
    mask = np.zeros((200, 200), np.uint8)
    mask[50:150, 60:160] = 1  # 0.01 x 0.01 degrees at 50 N
    paths = footprint_rasters(mask, crs="EPSG:4326", transform=from_origin(10.0, 50.0, 1e-4, 1e-4))
    result = polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.0, model_name="m", source="s")
    expected_ha = ellipsoidal_quadrangle_m2(10.006, 10.016, 49.985, 49.995) / 1e4
    _, rows, _ = read_layer(tmp_path / "out.gpkg")
    assert result.count == 1 and len(rows) == 1
    assert rows[0][1]["area_ha"] == pytest.approx(expected_ha, rel=0.005)
    assert result.total_area_ha == pytest.approx(expected_ha, rel=0.005)
    # 0.01 degree of latitude ~ 1112 m, of longitude at 50 N ~ 716 m
    assert rows[0][1]["perimeter_m"] == pytest.approx(2 * (1112.0 + 716.0), rel=0.01)


def test_state_plane_feet_area_is_in_hectares(footprint_rasters, tmp_path):
    mask = np.zeros((120, 120), np.uint8)
    mask[10:110, 10:110] = 1  # 100 px x 30 ft = 914.4 m a side
    paths = footprint_rasters(mask, crs="EPSG:2264", transform=from_origin(2000000.0, 700000.0, 30.0, 30.0))
    result = polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.0, model_name="m", source="s")
    assert result.total_area_ha == pytest.approx(914.4 ** 2 / 1e4, rel=0.01)


def test_specks_and_small_holes_removed_big_holes_kept(footprint_rasters, tmp_path):
    mask = np.zeros((100, 100), np.uint8)
    mask[10:60, 10:60] = 1          # 25 ha at 10 m pixels
    mask[20:22, 20:22] = 0          # 0.04 ha hole: filled
    mask[30:50, 30:50] = 0          # 4 ha hole: kept
    mask[21, 21] = UINT8_NODATA     # in the small hole: stays nodata
    mask[80:82, 80:82] = 1          # 0.04 ha speck: dropped
    paths = footprint_rasters(mask)
    result = polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.5, model_name="m", source="s")
    _, rows, _ = read_layer(tmp_path / "out.gpkg")
    assert result.count == 1
    polygon = rows[0][0]
    assert polygon.is_valid
    assert len(shapely.get_parts(polygon)[0].interiors) == 1
    assert rows[0][1]["area_ha"] == pytest.approx(25.0 - 4.0, rel=0.01)
    # the mask says the same: speck gone, small hole filled (its nodata pixel kept), big hole kept
    with rasterio.open(paths[0]) as src:
        cleaned = src.read(1)
    expected = mask.copy()
    expected[80:82, 80:82] = 0
    expected[20:22, 20:22] = 1
    expected[21, 21] = UINT8_NODATA
    np.testing.assert_array_equal(cleaned, expected)
    assert (cleaned == 1).sum() * 100 / 1e4 == pytest.approx(25.0 - 4.0 - 0.01)  # one nodata pixel of 0.01 ha


def test_attributes_probabilities_and_schema(footprint_rasters, tmp_path):
    mask = np.zeros((60, 60), np.uint8)
    mask[5:25, 5:25] = 1
    prob = np.full((60, 60), 10, np.uint8)
    prob[5:25, 5:25] = 127
    prob[10, 10] = 254
    paths = footprint_rasters(mask, prob)
    polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.0, model_name="tiny", source="scene.tif")
    fields, rows, srs = read_layer(tmp_path / "out.gpkg")
    assert fields == ["area_ha", "perimeter_m", "mean_prob", "max_prob", "model", "source"]
    attributes = rows[0][1]
    assert attributes["max_prob"] == pytest.approx(1.0)
    assert attributes["mean_prob"] == pytest.approx((399 * 127 / 254 + 1.0) / 400, abs=1e-3)
    assert attributes["model"] == "tiny" and attributes["source"] == "scene.tif"
    assert attributes["perimeter_m"] == pytest.approx(800.0, rel=0.01)
    assert srs.GetAuthorityCode(None) == "32633"


def test_nodata_is_never_a_footprint_and_empty_result_keeps_schema(footprint_rasters, tmp_path):
    mask = np.full((40, 40), UINT8_NODATA, np.uint8)
    mask[:, :20] = 0
    paths = footprint_rasters(mask)
    result = polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.0, model_name="m", source="s")
    fields, rows, _ = read_layer(tmp_path / "out.gpkg")
    assert result.count == 0 and result.total_area_ha == 0.0 and rows == []
    assert "area_ha" in fields and "model" in fields


def test_simplify_removes_pixel_staircase_but_keeps_area(footprint_rasters, tmp_path):
    yy, xx = np.mgrid[:100, :100]
    mask = (((yy - 50) ** 2 + (xx - 50) ** 2) < 40 ** 2).astype(np.uint8)
    paths = footprint_rasters(mask)
    result = polygonize(*paths, tmp_path / "out.gpkg", min_area_ha=0.0, model_name="m", source="s")
    _, rows, _ = read_layer(tmp_path / "out.gpkg")
    polygon = rows[0][0]
    assert polygon.is_valid
    assert len(polygon.exterior.coords if polygon.geom_type == "Polygon" else
               shapely.get_parts(polygon)[0].exterior.coords) < 100  # the raw outline has ~320 vertices
    assert result.total_area_ha == pytest.approx(math.pi * 400 ** 2 / 1e4, rel=0.02)


def test_cancel_raises(footprint_rasters, tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 1
    with pytest.raises(Cancelled, match="cancelled"):
        polygonize(*footprint_rasters(mask), tmp_path / "out.gpkg", min_area_ha=0.0, model_name="m", source="s",
                   is_canceled=lambda: True)
    assert not (tmp_path / "out.gpkg").exists()


def test_write_polygons_gpkg_round_trips_types(tmp_path):
    geoms = [shapely.box(0, 0, 1, 1), shapely.MultiPolygon([shapely.box(2, 2, 3, 3), shapely.box(4, 4, 5, 5)])]
    write_polygons_gpkg(tmp_path / "p.gpkg", geoms, CRS.from_epsg(4326).to_wkt(),
                        {"id": [1, 2], "name": ["a", "b"], "score": [0.5, 0.25]}, layer="labels")
    dataset = ogr.Open(str(tmp_path / "p.gpkg"))
    layer = dataset.GetLayerByName("labels")
    definition = layer.GetLayerDefn()
    types = [definition.GetFieldDefn(i).GetType() for i in range(3)]
    assert types == [ogr.OFTInteger64, ogr.OFTString, ogr.OFTReal]
    features = list(layer)
    assert [f.GetField("name") for f in features] == ["a", "b"]
    assert features[1].GetGeometryRef().GetGeometryCount() == 2
    assert layer.GetGeomType() == ogr.wkbMultiPolygon



def test_simplify_tolerance_in_metres(footprint_rasters, tmp_path):
    yy, xx = np.mgrid[:100, :100]
    mask = (((yy - 50) ** 2 + (xx - 50) ** 2) < 40 ** 2).astype(np.uint8)
    paths = footprint_rasters(mask)
    vertices = {}
    for tolerance_m in (0.0, 30.0):
        out = tmp_path / f"out{tolerance_m}.gpkg"
        result = polygonize(*paths, out, min_area_ha=0.0, simplify_tolerance_m=tolerance_m, model_name="m",
                            source="s")
        polygon = shapely.get_parts(read_layer(out)[1][0][0])[0]
        vertices[tolerance_m] = len(polygon.exterior.coords)
        if tolerance_m == 0.0:
            assert result.total_area_ha == pytest.approx(int(mask.sum()) * 0.01, rel=0.002)
    assert vertices[0.0] > 150 and vertices[30.0] < vertices[0.0] / 4
