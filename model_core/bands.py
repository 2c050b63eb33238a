"""Spectral bands: which raster band feeds which model band, and how raster values become reflectance.

``match_bands(RasterBandInfo.from_dataset(src), model_bands, mapping)`` returns the 1-based raster band for
each model band. It tries, in order: the explicit ``mapping``; band names in descriptions or tags ("B02",
"B8A", "SR_B5", "Blue", "swir16", ...), read with the sensor the file names (Landsat "B2" is not Sentinel-2
"B02"); centre wavelengths in tags; and, for rasters without names, the standard band counts of Sentinel-2
and Landsat products. Model bands carry Sentinel-2 names; bands of other sensors match by wavelength.

``resolve_radiometry(src)`` returns reflectance = DN * scale + offset and why: explicit values, then the
file's scales/offsets, then Sentinel-2 metadata tags, then Landsat Collection 2 Level-2 band names (SR_B*),
then the data type and values (uint16 x 10000, with the +1000 DN offset of processing baseline 04.00 detected
from the darkest pixels; values too bright for that are refused).
"""

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import BandMismatchError, InputError
from .rasters import read_bands, valid_pixels


@dataclass(frozen=True)
class Band:
    """A model input band: Sentinel-2 style name and centre wavelength in nanometres."""

    name: str
    wavelength_nm: float


SENTINEL2 = {"B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783, "B08": 842,
             "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190}
LANDSAT89 = {"B1": 443, "B2": 482, "B3": 561, "B4": 655, "B5": 865, "B6": 1609, "B7": 2201, "B8": 590,
             "B9": 1373, "B10": 10900, "B11": 12000}
LANDSAT457 = {"B1": 485, "B2": 560, "B3": 660, "B4": 835, "B5": 1650, "B6": 11450, "B7": 2220, "B8": 710}
# STAC/eo common names and plain-language names -> centre wavelength.
COMMON_NAMES = {"coastal": 443, "aerosol": 443, "blue": 490, "green": 560, "red": 665, "rededge": 705,
                "rededge1": 705, "rededge2": 740, "rededge3": 783, "nir": 842, "nir08": 865, "narrownir": 865,
                "nir09": 945, "watervapour": 945, "cirrus": 1375, "swir1": 1610, "swir16": 1610, "swir2": 2190,
                "swir22": 2190, "pan": 590}

DEFAULT_MODEL_BANDS = tuple(Band(name, float(SENTINEL2[name])) for name in ("B02", "B03", "B04", "B08", "B11", "B12"))

# Band order of standard products, by band count (used only when the raster names none of its bands).
_S2_LAYOUTS = {
    13: ("Sentinel-2 L1C (13 bands)", list(SENTINEL2)),
    12: ("Sentinel-2 L2A (12 bands, no B10)", [n for n in SENTINEL2 if n != "B10"]),
    10: ("Sentinel-2 10 m + 20 m bands", ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]),
}
_LANDSAT_LAYOUTS = {
    ("landsat89", 11): ("Landsat 8/9 Level-1 (11 bands)", LANDSAT89, range(1, 12)),
    ("landsat89", 7): ("Landsat 8/9 surface reflectance (SR_B1-SR_B7)", LANDSAT89, range(1, 8)),
    ("landsat457", 6): ("Landsat 4-7 TM/ETM+ bands 1-5 and 7", LANDSAT457, (1, 2, 3, 4, 5, 7)),
}


def wavelength_tolerance(wavelength_nm):
    """How far a raster band's centre may lie from a model band's and still stand in for it."""
    return max(25.0, 0.04 * wavelength_nm)


def _sensor_of(text):
    text = text.lower()
    if re.search(r"landsat[ _-]?(8|9)|\bl[co]0?[89]\b|\boli\b|lc0[89]", text):
        return "landsat89"
    if re.search(r"landsat[ _-]?[4-7]|\betm\+?|\btm\b|\ble0?7\b|\blt0?[45]\b|le07|lt0[45]", text):
        return "landsat457"
    if re.search(r"sentinel[ _-]?2|\bs2[abc]?\b|\bmsi\b", text):
        return "sentinel2"
    return None


def _sensor_of_band_names(labels):
    """Landsat 8/9 or 4-7 from Collection 2 Level-2 band names, when the file names no sensor: SR_B6 and ST_B10
    are 8/9's, ST_B6 and an SR_B7 without SR_B6 are 4-7's; None when they do not tell."""
    names = {_upper_name(label) for label in labels if label}
    if names & {"SR_B6", "ST_B10"}:
        return "landsat89"
    if "ST_B6" in names or "SR_B7" in names:
        return "landsat457"
    return None


def canonical_name(text, sensor=None):
    """(name, wavelength) for a band label such as "B02", "B8A", "band 4", "SR_B5", "Blue" or "swir16", read
    for ``sensor`` ("sentinel2", "landsat89", "landsat457" or None = Sentinel-2 numbering); None if unknown.
    Sentinel-2 bands keep their names; other sensors' bands are named by the Sentinel-2 band nearest them."""
    label = re.sub(r"\(.*?\)", "", str(text or "")).strip().lower()
    label = re.sub(r"[\s_-]+", "", label)
    if not label:
        return None
    if label in COMMON_NAMES:
        return _nearest_sentinel2(COMMON_NAMES[label])
    match = re.fullmatch(r"(?:sr|toa|st)?(?:b|band)0*(\d{1,2}|8a)", label)
    if match is None:
        return None
    number = match.group(1).upper()
    table = {"landsat89": LANDSAT89, "landsat457": LANDSAT457}.get(sensor)
    if table is not None:
        wavelength = table.get(f"B{number}")
        return _nearest_sentinel2(wavelength) if wavelength is not None else None
    name = "B8A" if number == "8A" else f"B{int(number):02d}"
    return (name, SENTINEL2[name]) if name in SENTINEL2 else None


def _nearest_sentinel2(wavelength):
    name = min(SENTINEL2, key=lambda n: abs(SENTINEL2[n] - wavelength))
    if abs(SENTINEL2[name] - wavelength) > wavelength_tolerance(SENTINEL2[name]):
        return (f"{wavelength:g} nm", wavelength)
    return name, wavelength


def _wavelength_tag(tags):
    for key, value in tags.items():
        if key.lower() in ("wavelength_nm", "wavelength", "central_wavelength_um", "center_wavelength"):
            try:
                value = float(str(value).split()[0])
            except ValueError:
                continue
            return value * 1000.0 if value < 30 else value  # micrometres -> nanometres
    return None


_NAME_TAGS = ("name", "NAME", "BANDNAME", "band_name", "common_name")


@dataclass(frozen=True)
class RasterBandInfo:
    """What a raster says about its bands: per band (description, tags) and the sensor it names, if any."""

    count: int
    descriptions: tuple
    band_tags: tuple
    sensor: str = None

    @classmethod
    def from_dataset(cls, src):
        tags = src.tags()
        sensor_text = " ".join(str(tags.get(k, "")) for k in tags if k.upper() in (
            "SENSOR", "SPACECRAFT", "SPACECRAFT_NAME", "SATELLITE", "PLATFORM", "PRODUCT_TYPE", "PRODUCT_ID",
            "LANDSAT_PRODUCT_ID", "MISSION", "TIFFTAG_IMAGEDESCRIPTION"))
        descriptions = tuple(d or "" for d in src.descriptions)
        band_tags = tuple(src.tags(i) for i in range(1, src.count + 1))
        sensor = _sensor_of(sensor_text) or _sensor_of_band_names(descriptions + tuple(
            t.get(key) for t in band_tags for key in _NAME_TAGS))
        return cls(src.count, descriptions, band_tags, sensor)

    def band(self, index):
        """(name, wavelength_nm) known for 1-based band ``index``; either may be None."""
        tags = self.band_tags[index - 1]
        named = None
        for label in (self.descriptions[index - 1], *(tags.get(key) for key in _NAME_TAGS)):
            named = canonical_name(label, self.sensor) if label else None
            if named:
                break
        wavelength = _wavelength_tag(tags)
        if named is None and wavelength is not None:
            named = _nearest_sentinel2(wavelength)
        if named is None:
            return None, None
        name, nominal = named
        return name, wavelength if wavelength is not None else nominal

    def layout(self):
        """(description, [(name, wavelength)] per band) from the band count of a standard product, for rasters
        whose bands carry no names; a 6-band Landsat 4-7 stack only when the file says it is Landsat 4-7."""
        if self.sensor in (None, "sentinel2") and self.count in _S2_LAYOUTS:
            title, names = _S2_LAYOUTS[self.count]
            return title, [(n, SENTINEL2[n]) for n in names]
        sensor = self.sensor or ("landsat89" if self.count in (7, 11) else None)
        if (sensor, self.count) in _LANDSAT_LAYOUTS:
            title, table, numbers = _LANDSAT_LAYOUTS[(sensor, self.count)]
            return title, [_nearest_sentinel2(table[f"B{i}"]) for i in numbers]
        return None


def match_bands(info, model_bands, mapping=None):
    """1-based raster band for each of ``model_bands``; ``mapping`` ({model band name: raster band}) overrides
    the automatic match for the bands it names. Raises BandMismatchError naming the bands it cannot find and
    the fix (a band mapping)."""
    mapping = {_mapping_key(k): int(v) for k, v in (mapping or {}).items()}
    for name, index in mapping.items():
        if not 1 <= index <= info.count:
            raise BandMismatchError(f"band mapping {name}={index}: the raster has {info.count} band"
                                    f"{'s' if info.count != 1 else ''} (1-{info.count}); fix the mapping")
    known = [info.band(i) for i in range(1, info.count + 1)]
    source = "band names"
    if all(name is None for name, _ in known):
        layout = info.layout()
        if layout is not None:
            known, source = [(n, w) for n, w in layout[1]], f"band count: {layout[0]}"
    chosen, missing = [], []
    for band in model_bands:
        if band.name in mapping:
            chosen.append(mapping[band.name])
            continue
        index = _find(known, band)
        (chosen.append(index) if index is not None else missing.append(band))
    if missing:
        raise BandMismatchError(_mismatch_message(info, known, model_bands, missing, source))
    for index in mapping.values():
        fed = [band.name for band, chosen_index in zip(model_bands, chosen) if chosen_index == index]
        if len(fed) > 1:
            raise BandMismatchError(f"the band mapping feeds raster band {index} to {', '.join(fed)}; give each model "
                                    "band its own raster band")
    return chosen


def _find(known, band):
    by_name = [i for i, (name, _) in enumerate(known, start=1) if name == band.name]
    if by_name:
        return by_name[0]
    near = [(abs(w - band.wavelength_nm), i) for i, (_, w) in enumerate(known, start=1)
            if w is not None and abs(w - band.wavelength_nm) <= wavelength_tolerance(band.wavelength_nm)]
    return min(near)[1] if near else None


def _mismatch_message(info, known, model_bands, missing, source):
    have = ", ".join(f"{i}={name}" if name else f"{i}=?" for i, (name, _) in enumerate(known, start=1))
    if all(name is None for name, _ in known):
        described = [d for d in info.descriptions if d]
        what = (f"its {info.count} band{'s carry' if info.count != 1 else ' carries'} no name or wavelength"
                + (f" it recognises (described as {', '.join(described[:6])}{', ...' if len(described) > 6 else ''})"
                   if described else "")
                + f" and {info.count} is not a standard Sentinel-2/Landsat band count")
    else:
        what = f"it has {have} ({source})"
    example = ",".join(f"{b.name}={i}" for i, b in enumerate(model_bands, start=1))
    return (f"the raster lacks band{'s' if len(missing) > 1 else ''} "
            f"{', '.join(f'{b.name} ({b.wavelength_nm:g} nm)' for b in missing)} that the model needs; {what}; "
            f"give a band mapping such as {example} with your raster's band numbers (--bands), or a raster with "
            f"those bands")


def _mapping_key(name):
    named = canonical_name(name)
    return named[0] if named else str(name).strip().upper()


def parse_band_mapping(text):
    """"B02=1,B03=2,..." -> {"B02": 1, "B03": 2, ...} (names normalised: "B2" -> "B02", "blue" -> "B02")."""
    mapping = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,;\s]+", str(text)))):
        name, sep, index = item.partition("=")
        if not sep or not index.strip().isdigit() or int(index) < 1:
            raise InputError(f"band mapping item {item!r} is not NAME=BAND; write e.g. B02=1,B03=2,B04=3,B08=4,"
                             "B11=5,B12=6 (model band name = 1-based raster band number)")
        named = canonical_name(name)
        if named is None:
            raise InputError(f"band mapping: {name.strip()!r} is not a band name; use Sentinel-2 names such as "
                             "B02, B03, B04, B08, B11, B12")
        if named[0] in mapping:
            raise InputError(f"band mapping names {named[0]} twice; give each model band once")
        mapping[named[0]] = int(index)
    if not mapping:
        raise InputError("band mapping is empty; write e.g. B02=1,B03=2,B04=3,B08=4,B11=5,B12=6")
    return mapping


# ---------------------------------------------------------------------------------------------- radiometry

@dataclass(frozen=True)
class Radiometry:
    """reflectance = DN * scale + offset."""

    scale: float
    offset: float

    def __str__(self):
        return f"reflectance = DN * {self.scale:g} {'-' if self.offset < 0 else '+'} {abs(self.offset):g}"


L2A_OFFSET_DN = 1000  # Sentinel-2 processing baseline >= 04.00 adds 1000 to every reflectance DN
LANDSAT_C2_L2 = Radiometry(2.75e-5, -0.2)  # Collection 2 Level-2 surface reflectance (SR_B* bands)
# Darkest-band DN that reflectance x 10000 reaches only under cloud or snow over everything (0.5, offset or not);
# Landsat Collection 2 DN start near 5000 (Level-1) and 7273 (Level-2) at zero reflectance.
IMPLAUSIBLE_DARKEST_DN = 6000
_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET", "ADD_OFFSET")
_QUANTIFICATION_TAGS = ("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE", "REFLECTANCE_QUANTIFICATION_VALUE")


def resolve_radiometry(src, explicit_scale=None, explicit_offset=None, bands=None):
    """(Radiometry, reason) for the open rasterio dataset ``src``. ``bands``: the 1-based bands the model reads
    (default all); only their scale/offset metadata and names count, so an unused band with its own scale (a
    Landsat thermal band) does no harm."""
    bands = list(bands or range(1, src.count + 1))
    if explicit_scale is not None or explicit_offset is not None:
        default = _guess(src, bands)[0] if explicit_scale is None or explicit_offset is None else None
        scale = explicit_scale if explicit_scale is not None else default.scale
        offset = explicit_offset if explicit_offset is not None else default.offset
        if not (math.isfinite(float(scale)) and float(scale) > 0) or not math.isfinite(float(offset)):
            raise InputError(f"scale {scale} and offset {offset} cannot turn DN into reflectance (reflectance = DN x "
                             "scale + offset; the scale must be above 0); give, e.g., --scale 0.0001 --offset -0.1 "
                             "for Sentinel-2 L2A of processing baseline 04.00 or later")
        return Radiometry(float(scale), float(offset)), "given"
    scales = {src.scales[band - 1] for band in bands}
    offsets = {src.offsets[band - 1] for band in bands}
    if scales != {1.0} or offsets != {0.0}:
        if len(scales) > 1 or len(offsets) > 1:
            raise InputError(f"{_name(src)} has a different scale/offset per band ({sorted(scales)}, "
                             f"{sorted(offsets)}) in bands {bands}; give one scale and offset for all bands "
                             "(--scale, --offset)")
        scale, offset = float(scales.pop()), float(offsets.pop())
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
            raise InputError(f"{_name(src)} declares scale {scale:g} and offset {offset:g}, which cannot turn DN into "
                             "reflectance; give the right ones (--scale, --offset)")
        return Radiometry(scale, offset), "the raster's scale/offset metadata"
    tags = {k.upper(): v for k, v in src.tags().items()}
    tags.update({k.upper(): v for k, v in src.tags(bands[0]).items() if k.upper() not in tags})
    quant = _float_tag(tags, _QUANTIFICATION_TAGS)
    add = _float_tag(tags, _OFFSET_TAGS)
    if quant is not None or add is not None:
        quant = quant or 10000.0
        return (Radiometry(1.0 / quant, (add or 0.0) / quant),
                f"Sentinel-2 metadata: quantification {quant:g}, add offset {add or 0:g} DN")
    return _guess(src, bands)


def _guess(src, bands):
    dtype = np.dtype(src.dtypes[bands[0] - 1])
    if dtype == np.uint8:
        return Radiometry(1.0 / 255.0, 0.0), "8-bit data scaled 0-255 -> 0-1 (not calibrated reflectance)"
    labels = [src.descriptions[band - 1] or next(filter(None, map(src.tags(band).get, _NAME_TAGS)), "")
              for band in bands]
    if dtype.kind in "iu" and all(re.fullmatch(r"SR_B\d", _upper_name(label)) for label in labels):
        return LANDSAT_C2_L2, f"Landsat Collection 2 Level-2 surface reflectance (bands {', '.join(labels)})"
    values = sample_dn(src, bands)  # the model's bands only: quality or class bands stacked with them mislead
    if values.size == 0:
        return Radiometry(1e-4 if dtype.kind in "iu" else 1.0, 0.0), "no valid pixels to inspect"
    high = float(np.percentile(values, 99))
    if np.issubdtype(dtype, np.floating) and high <= 3.0:
        return Radiometry(1.0, 0.0), "floating-point reflectance (values 0-1)"
    darkest = darkest_dn(values)
    if darkest >= IMPLAUSIBLE_DARKEST_DN:
        raise InputError(f"{_name(src)}: no pixel is darker than {darkest:.0f} DN in any band, too bright for "
                         "reflectance x 10000 (Sentinel-2), even with the L2A +1000 offset; give the scale and offset "
                         "(--scale, --offset): 0.0000275 and -0.2 for Landsat Collection 2 Level-2, 0.0001 and -0.1 "
                         "for Sentinel-2 L2A with the offset over bright ground only")
    if darkest >= L2A_OFFSET_DN and high > 1500:
        return (Radiometry(1e-4, -L2A_OFFSET_DN * 1e-4),
                f"reflectance x 10000 with the Sentinel-2 L2A +{L2A_OFFSET_DN} DN offset (no pixel darker than "
                f"{darkest:.0f} DN in any band; a bright desert without the offset looks the same: set the offset "
                "to 0 (--offset) if the raster has none)")
    return Radiometry(1e-4, 0.0), "reflectance x 10000 (values up to ~10000)"


def darkest_dn(values):
    """The lowest 0.1 percentile of any band of ``values`` ([bands, n] DN): at or above L2A_OFFSET_DN the data are
    taken to carry the L2A offset. A bright desert without it looks the same (bench/offset_misread.py)."""
    return float(min(np.percentile(band, 0.1) for band in values))


def sample_dn(src, bands=None, max_pixels=250_000):
    """Valid DN values, [bands, n], of ``bands`` (1-based; default all) from a decimated read of the raster."""
    bands = list(bands or range(1, src.count + 1))
    step = max(1, int(np.ceil(np.sqrt(src.width * src.height / max_pixels))))
    shape = (len(bands), max(1, src.height // step), max(1, src.width // step))
    data = read_bands(src, bands, out_shape=shape, where=" (sampling its values for the reflectance scale)")
    return np.asarray(data, np.float64)[:, valid_pixels(src, bands, data)]


def _float_tag(tags, keys):
    for key in keys:
        if key in tags:
            try:
                return float(tags[key])
            except ValueError:
                continue
    return None


def _upper_name(label):
    return re.sub(r"[\s-]+", "_", str(label or "").strip()).upper()


def _name(src):
    return getattr(src, "name", "the raster").rsplit("/", 1)[-1]
