"""Polygon layers for the engine: read with OGR from any vector format GDAL knows (invalid geometries repaired,
non-polygon parts dropped), reprojected between CRSs, selected by extent. No torch: scoring and vectorizing use it
too."""

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import shapely
from osgeo import ogr, osr

from .errors import InputError
from .vectorize import _polygonal


@dataclass
class PolygonLayer:
    """Polygons read from a vector file: shapely geometries in the layer's CRS (``crs_wkt``; None if unset)."""
    path: str
    layer: str
    geometries: list
    crs_wkt: str | None
    repaired: int  # invalid geometries that were repaired

    def describe_crs(self):
        return crs_name(self.crs_wkt) if self.crs_wkt else "not set"


def read_polygons(path, layer=None, *, allow_empty=False, log=None, what="polygon file"):
    """Read the polygons of ``layer`` (default: the first) of a GeoPackage/Shapefile/GeoJSON/... with OGR.
    Invalid geometries are repaired (``shapely.make_valid``) and counted; non-polygon parts are dropped.
    A layer without polygons is refused unless ``allow_empty``. ``what``: the file's role, for messages."""
    log = log or (lambda message: None)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; check the path")
    with _ogr_exceptions():
        try:
            source, reason = ogr.Open(str(path)), "not a vector format GDAL knows"
        except RuntimeError as exc:
            source, reason = None, str(exc)
        if source is None:
            raise InputError(f"cannot read {path} as a vector layer ({reason}); give a GeoPackage, Shapefile or "
                             "GeoJSON file")
        if layer is None:
            if source.GetLayerCount() == 0:
                raise InputError(f"{path} holds no vector layer; give a file with a polygon layer")
            ogr_layer = source.GetLayer(0)
            if source.GetLayerCount() > 1:
                names = [source.GetLayer(i).GetName() for i in range(source.GetLayerCount())]
                log(f"{path.name} holds {len(names)} layers ({', '.join(names)}); reading the first, "
                    f"{names[0]!r}: name the layer to read another")
        else:
            ogr_layer = source.GetLayerByName(layer)
            if ogr_layer is None:
                names = [source.GetLayer(i).GetName() for i in range(source.GetLayerCount())]
                raise InputError(f"{path} has no layer {layer!r} (layers: {', '.join(names)}); pick one of those")
        srs = ogr_layer.GetSpatialRef()
        geometries, repaired = [], 0
        for feature in ogr_layer:
            geometry = feature.GetGeometryRef()
            if geometry is None or geometry.IsEmpty():
                continue
            geometry = geometry.GetLinearGeometry()
            geometry.FlattenTo2D()
            shape = shapely.from_wkb(bytes(geometry.ExportToWkb()))
            if not shape.is_valid:
                shape = shapely.make_valid(shape)
                repaired += 1
            shape = _polygonal(shape)
            if not shape.is_empty:
                geometries.append(shape)
        name = ogr_layer.GetName()
    if not geometries and not allow_empty:
        raise InputError(f"layer {name!r} of {path} ({what}) has no polygons; digitise polygons in it or pick "
                         "another layer")
    if repaired:
        log(f"{path.name}: repaired {repaired} invalid geometries")
    return PolygonLayer(str(path), name, geometries, srs.ExportToWkt() if srs else None, repaired)


def reproject_polygons(polygons, crs_wkt):
    """``polygons.geometries`` in the CRS ``crs_wkt`` (OSR transform, x/y axis order). Unchanged if either CRS is
    unset or both are the same. Geometries that cannot be transformed (far outside the CRS's area) are dropped."""
    if not polygons.crs_wkt or not crs_wkt:
        return list(polygons.geometries)
    source, target = _srs(polygons.crs_wkt), _srs(crs_wkt)
    if source.IsSame(target):
        return list(polygons.geometries)
    transform = osr.CoordinateTransformation(source, target)
    reprojected = []
    with _ogr_exceptions():
        for shape in polygons.geometries:
            geometry = ogr.CreateGeometryFromWkb(shapely.to_wkb(shape))
            try:
                geometry.Transform(transform)
            except RuntimeError:
                continue
            shape = shapely.from_wkb(bytes(geometry.ExportToWkb()))
            shape = _polygonal(shape if shape.is_valid else shapely.make_valid(shape))
            if not shape.is_empty:
                reprojected.append(shape)
    return reprojected


@contextmanager
def _ogr_exceptions():
    """OGR raises RuntimeError instead of returning None inside this block."""
    was_on = ogr.GetUseExceptions()
    ogr.UseExceptions()
    try:
        yield
    finally:
        if not was_on:
            ogr.DontUseExceptions()


def _srs(wkt):
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def crs_name(wkt):
    """A CRS's name and authority code, e.g. "WGS 84 / UTM zone 33N (EPSG:32633)"."""
    srs = _srs(wkt)
    code = srs.GetAuthorityCode(None)
    return f"{srs.GetName()} ({srs.GetAuthorityName(None)}:{code})" if code else srs.GetName()


def overlapping(geometries, bounds):
    """The ``geometries`` that intersect the box ``bounds`` (xmin, ymin, xmax, ymax)."""
    box = shapely.box(*bounds)
    return [g for g in geometries if g.intersects(box)]
