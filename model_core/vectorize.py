"""Footprint mask -> cleaned polygons with attributes, written to a GeoPackage.

Polygons are traced by GDAL straight from the mask file (``rasterio.band``), scanline by scanline, so
the mask is never held in memory as a whole; only the footprint polygons are. Areas and perimeters
are geodesic (WGS84 ellipsoid, ``pyproj.Geod``) after converting coordinates to longitude/latitude with
GDAL, so they are true whatever the raster CRS (UTM, geographic degrees, state plane feet...).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import rasterio.windows
import shapely
from osgeo import gdal, ogr, osr
from shapely.geometry import Polygon, shape

from .errors import Cancelled, InputError, OutputError
from .rasters import MASK_BACKGROUND, MASK_FOOTPRINT, MASK_NODATA, decode_probability

with warnings.catch_warnings():  # Debian's pyproj warns about PROJ data it does not need for Geod
    warnings.simplefilter("ignore")
    from pyproj import Geod

_WGS84 = Geod(ellps="WGS84")
FOOTPRINT_LAYER = "footprints"
DEFAULT_SIMPLIFY_PIXELS = 0.75
FOOTPRINT_FIELD_TYPES = {"area_ha": float, "perimeter_m": float, "mean_prob": float, "max_prob": float,
                         "model": str, "source": str}
_OGR_FIELD_TYPES = {float: ogr.OFTReal, int: ogr.OFTInteger64, str: ogr.OFTString}


@dataclass(frozen=True)
class VectorizeResult:
    count: int
    total_area_ha: float


def to_lonlat(geoms, crs):
    """Geometries (array-like) in ``crs`` -> the same geometries in WGS84 longitude/latitude (via GDAL)."""
    def reproject(coords):
        if len(coords) == 0:
            return coords
        lon, lat = rasterio.warp.transform(crs, "EPSG:4326", coords[:, 0], coords[:, 1])
        return np.column_stack([lon, lat])
    return shapely.transform(np.asarray(geoms, dtype=object), reproject)


def geodesic_area_perimeter(geoms, crs):
    """Geodesic areas (m²) and perimeters (m) on the WGS84 ellipsoid of polygons given in ``crs``."""
    measures = [_WGS84.geometry_area_perimeter(_orient_for_geod(g)) for g in to_lonlat(geoms, crs)]
    areas = np.array([a for a, _ in measures], dtype=float)
    perimeters = np.array([p for _, p in measures], dtype=float)
    return areas, perimeters


def _orient_for_geod(geom):
    """``geom`` with exterior rings counter-clockwise and holes clockwise, as pyproj's Geod wants.

    Not ``shapely.orient_polygons``: it needs GEOS >= 3.12, and inside QGIS (whose GEOS, 3.11 on Debian 12, shadows
    the one bundled with shapely) it crashes the process."""
    if geom.geom_type == "MultiPolygon":
        return shapely.multipolygons([_orient_for_geod(part) for part in geom.geoms])
    if geom.geom_type != "Polygon" or geom.is_empty:
        return geom
    shell = geom.exterior if geom.exterior.is_ccw else geom.exterior.reverse()
    return Polygon(shell, [ring.reverse() if ring.is_ccw else ring for ring in geom.interiors])


def check_crs_convertible(crs, point):
    """Raise InputError unless ``crs`` is set and converts to longitude/latitude at ``point`` (x, y)."""
    fix = "assign a CRS in QGIS: Raster > Projections > Assign Projection (or gdal_edit.py -a_srs EPSG:XXXX)"
    if crs is None:
        raise InputError(f"the raster has no coordinate reference system; {fix}")
    try:
        lon, lat = rasterio.warp.transform(crs, "EPSG:4326", [point[0]], [point[1]])
    except Exception as exc:
        raise InputError(f"the raster's CRS is unknown or cannot be converted to longitude/latitude "
                         f"({crs.to_string()[:80]}); {fix}") from exc
    if not (np.isfinite(lon[0]) and np.isfinite(lat[0]) and -90 <= lat[0] <= 90):
        raise InputError(f"the raster's CRS does not place it on Earth (centre maps to lon {lon[0]}, "
                         f"lat {lat[0]}); {fix}")


def write_polygons_gpkg(path, geoms, crs_wkt, fields, layer=FOOTPRINT_LAYER, field_types=None):
    """Write (multi)polygons and their attributes to a new GeoPackage layer of MultiPolygons.

    ``fields`` maps field name -> list of values, one per geometry, in column order. Field types are taken
    from ``field_types`` (name -> float | int | str) or else from the first value, so pass ``field_types``
    when the lists may be empty: an empty result still gets a layer with the full schema.
    """
    field_types = {**{name: _python_type(values[0]) for name, values in fields.items() if len(values)},
                   **(field_types or {})}
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    out_layer = dataset.CreateLayer(layer, srs, ogr.wkbMultiPolygon) if dataset is not None else None
    if out_layer is None:
        raise OutputError(f"cannot create GeoPackage layer {layer!r} in {path} ({gdal.GetLastErrorMsg()}); "
                          f"choose a writable .gpkg path")
    try:
        for name in fields:
            out_layer.CreateField(ogr.FieldDefn(name, _OGR_FIELD_TYPES[field_types.get(name, str)]))
        definition = out_layer.GetLayerDefn()
        out_layer.StartTransaction()
        for i, geom in enumerate(geoms):
            feature = ogr.Feature(definition)
            multi = geom if geom.geom_type == "MultiPolygon" else shapely.MultiPolygon([geom])
            feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(multi)))
            for name, values in fields.items():
                value = values[i]
                feature.SetField(name, value.item() if isinstance(value, np.generic) else value)
            out_layer.CreateFeature(feature)
        out_layer.CommitTransaction()
    finally:
        dataset = None  # closes and flushes the GeoPackage


def _python_type(value):
    if isinstance(value, (int, np.integer)):
        return int
    return float if isinstance(value, (float, np.floating)) else str


def polygonize(mask_path, prob_path, out_gpkg, *, min_area_ha, simplify_tolerance_m=None, model_name, source,
               progress=None, is_canceled=None):
    """Trace footprints (mask == 1) into polygons and write them to ``out_gpkg`` layer "footprints".

    Holes and polygons smaller than ``min_area_ha`` (true area, on the pixel outlines) are removed, from the
    polygons and from the mask file alike (so that mask and polygons count the same footprint pixels); the rest
    are simplified with Douglas-Peucker at ``simplify_tolerance_m`` (default: 0.75 pixel, just over the 0.71 px a
    one-pixel staircase deviates from its diagonal, so the staircase goes and areas move little) keeping topology.
    Attributes: ``area_ha`` and ``perimeter_m`` (geodesic, of the simplified polygon), ``mean_prob`` and
    ``max_prob`` (0..1, over the footprint's pixels in ``prob_path``), ``model``, ``source``.
    """
    progress = progress or (lambda percent: None)
    is_canceled = is_canceled or (lambda: False)
    min_area_m2 = float(min_area_ha) * 1e4
    with rasterio.open(mask_path) as mask_src, rasterio.open(prob_path) as prob_src:
        crs, transform = mask_src.crs, mask_src.transform
        footprint_band = rasterio.band(mask_src, 1)
        raw = [shape(geom) for geom, value in
               rasterio.features.shapes(footprint_band, mask=footprint_band, transform=transform)
               if value == MASK_FOOTPRINT]
        _check_canceled(is_canceled)
        progress(30.0)
        raw, specks = _drop_small(raw, crs, min_area_m2)
        filled = [_fill_small_holes(poly, crs, min_area_m2) for poly in raw]
        raw, holes = [poly for poly, _ in filled], [hole for _, poly_holes in filled for hole in poly_holes]
        _check_canceled(is_canceled)
        progress(50.0)
        mean_prob, max_prob = _probability_stats(raw, prob_src)
        tolerance = _tolerance_in_crs_units(mask_src, simplify_tolerance_m)
    _clean_mask(mask_path, specks, holes)
    _check_canceled(is_canceled)
    progress(80.0)
    polygons = [_polygonal(shapely.make_valid(g)) for g in shapely.simplify(np.asarray(raw, dtype=object),
                                                                             tolerance, preserve_topology=True)]
    areas, perimeters = geodesic_area_perimeter(polygons, crs) if polygons else (np.zeros(0), np.zeros(0))
    areas_ha = [round(a / 1e4, 4) for a in areas]
    fields = {"area_ha": areas_ha, "perimeter_m": [round(p, 2) for p in perimeters],
              "mean_prob": mean_prob, "max_prob": max_prob,
              "model": [model_name] * len(polygons), "source": [source] * len(polygons)}
    write_polygons_gpkg(out_gpkg, polygons, crs.to_wkt(), fields, field_types=FOOTPRINT_FIELD_TYPES)
    progress(100.0)
    return VectorizeResult(count=len(polygons), total_area_ha=float(round(sum(areas_ha), 4)))


def _check_canceled(is_canceled):
    if is_canceled():
        raise Cancelled("vectorizing was cancelled; no footprint file was written")


def _drop_small(polygons, crs, min_area_m2):
    """(polygons of at least ``min_area_m2``, the smaller ones)."""
    if not polygons or min_area_m2 <= 0:
        return polygons, []
    areas, _ = geodesic_area_perimeter(polygons, crs)
    return [p for p, a in zip(polygons, areas) if a >= min_area_m2], [p for p, a in zip(polygons, areas)
                                                                       if a < min_area_m2]


def _fill_small_holes(polygon, crs, min_area_m2):
    """(``polygon`` without its holes smaller than ``min_area_m2``, those holes as polygons)."""
    if not polygon.interiors or min_area_m2 <= 0:
        return polygon, []
    holes = [Polygon(ring) for ring in polygon.interiors]
    areas, _ = geodesic_area_perimeter(holes, crs)
    return (Polygon(polygon.exterior, [h.exterior for h, a in zip(holes, areas) if a >= min_area_m2]),
            [h for h, a in zip(holes, areas) if a < min_area_m2])


def _clean_mask(mask_path, specks, holes, strip_rows=256):
    """Set the mask's valid pixels inside ``specks`` to background and inside ``holes`` to footprint (both pixel
    outlines traced from it; a speck inside a hole ends up footprint, as its polygon does), strip by strip."""
    if not specks and not holes:
        return
    shapes = [*specks, *holes]
    burn = np.array([MASK_BACKGROUND] * len(specks) + [MASK_FOOTPRINT] * len(holes), dtype=np.uint8)
    tree = shapely.STRtree(shapes)
    with rasterio.open(mask_path, "r+") as dst:
        for row in range(0, dst.height, strip_rows):
            window = rasterio.windows.Window(0, row, dst.width, min(strip_rows, dst.height - row))
            hits = np.sort(tree.query(shapely.box(*dst.window_bounds(window))))  # specks first, holes over them
            if not hits.size:
                continue
            values = rasterio.features.rasterize(((shapes[i], int(burn[i]) + 1) for i in hits), fill=0,
                                                 out_shape=(window.height, window.width),
                                                 transform=dst.window_transform(window), dtype="uint8")
            mask = dst.read(1, window=window)
            change = (values > 0) & (mask != MASK_NODATA)
            mask[change] = values[change] - 1
            dst.write(mask, 1, window=window)


def _polygonal(geom):
    """The polygonal part of a repaired geometry, as a Polygon or MultiPolygon."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts)


def _probability_stats(polygons, prob_src):
    """Mean and max probability (0..1) over the pixels inside each pixel-outline polygon."""
    means, maxima = [], []
    for poly in polygons:
        window = rasterio.features.geometry_window(prob_src, [poly])  # also on south-up grids
        prob, valid = decode_probability(prob_src.read(1, window=window))
        inside = rasterio.features.geometry_mask([poly], prob.shape, prob_src.window_transform(window),
                                                 invert=True) & valid
        values = prob[inside]
        means.append(round(float(values.mean()), 4) if values.size else 0.0)
        maxima.append(round(float(values.max()), 4) if values.size else 0.0)
    return means, maxima


def _tolerance_in_crs_units(src, tolerance_m):
    """Simplification tolerance in CRS units: DEFAULT_SIMPLIFY_PIXELS, else metres converted at the centre."""
    pixel = abs(src.transform.a)
    if tolerance_m is None:
        return DEFAULT_SIMPLIFY_PIXELS * pixel
    cx, cy = src.xy(src.height // 2, src.width // 2)
    _, (pixel_m,) = geodesic_area_perimeter([shapely.box(cx, cy, cx + pixel, cy + pixel)], src.crs)
    return float(tolerance_m) / (pixel_m / 4) * pixel

