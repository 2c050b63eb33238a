"""Deterministic synthetic Sentinel-2 L2A-like scenes with mining footprints, for tests, the demo and training.

A scene is a land-cover map (forest, grass/crop, bare fields, water, towns, natural bare ground: the hard
negatives) with 0..n mines painted on it. Each mine has an open pit (terraced benches, sometimes a pit lake),
tailings ponds behind brighter dams, angular waste dumps and haul roads joining them. Every class gets a typical
surface-reflectance spectrum for the 12 L2A bands, modulated by spatially correlated texture; edges are mixed
by a slight blur and sensor noise is added. Two labels come with it:

- ``fine``: the exact mine footprint (pits, ponds with dams, dumps, roads), as a precise hand-digitised label;
- ``coarse``: a generalised outline as in global inventories: a buffered hull of each mine, shifted by tens of
  metres, that swallows surroundings and sometimes misses a small outlying part.

:class:`DomainShift` changes sensor gain, haze, season, landscape and the look of mines (some dug in coal, with
dark ground that is not a mine beside them), so a "coarse" and a "fine" domain can differ as real archives do.
Everything is drawn from one seeded ``numpy`` generator.
"""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import Cancelled

BAND_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
WAVELENGTHS_NM = (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190)
L2A_OFFSET_DN = 1000

# class id -> name; the mine classes are labelled 1 in ``fine``. The dark classes, last, occur only in scenes
# with ``DomainShift.dark_mines`` set.
DARK_CLASSES = ("burn_scar", "turbid_water", "coal_pit", "coal_dump")
CLASSES = ("forest", "grass", "bare_field", "water", "urban", "natural_bare", "rock_outcrop",
           "pit", "pit_lake", "tailings", "tailings_water", "dam", "waste_dump", "haul_road") + DARK_CLASSES
MINE_CLASSES = ("pit", "pit_lake", "tailings", "tailings_water", "dam", "waste_dump", "haul_road",
                "coal_pit", "coal_dump")
HARD_NEGATIVE_CLASSES = ("natural_bare", "rock_outcrop", "bare_field", "burn_scar", "turbid_water")

# typical surface reflectance per class over BAND_NAMES
SPECTRA = {
    "forest":         (0.030, 0.030, 0.050, 0.030, 0.080, 0.250, 0.320, 0.350, 0.360, 0.340, 0.170, 0.080),
    "grass":          (0.040, 0.040, 0.080, 0.050, 0.120, 0.300, 0.380, 0.420, 0.430, 0.400, 0.220, 0.110),
    "bare_field":     (0.080, 0.090, 0.120, 0.160, 0.190, 0.210, 0.230, 0.250, 0.260, 0.260, 0.330, 0.270),
    "water":          (0.060, 0.050, 0.040, 0.030, 0.025, 0.020, 0.018, 0.015, 0.012, 0.010, 0.005, 0.003),
    "urban":          (0.100, 0.100, 0.110, 0.120, 0.140, 0.160, 0.170, 0.180, 0.190, 0.190, 0.200, 0.180),
    "natural_bare":   (0.110, 0.130, 0.180, 0.240, 0.270, 0.290, 0.310, 0.320, 0.330, 0.330, 0.400, 0.350),
    "rock_outcrop":   (0.120, 0.140, 0.170, 0.210, 0.230, 0.250, 0.260, 0.270, 0.280, 0.280, 0.350, 0.320),
    "pit":            (0.120, 0.140, 0.170, 0.210, 0.230, 0.250, 0.260, 0.270, 0.280, 0.280, 0.360, 0.330),
    "pit_lake":       (0.070, 0.080, 0.110, 0.070, 0.050, 0.035, 0.030, 0.025, 0.020, 0.018, 0.010, 0.006),
    "tailings":       (0.150, 0.170, 0.210, 0.220, 0.220, 0.210, 0.210, 0.200, 0.200, 0.180, 0.140, 0.100),
    "tailings_water": (0.080, 0.090, 0.120, 0.080, 0.060, 0.040, 0.030, 0.030, 0.020, 0.020, 0.010, 0.005),
    "dam":            (0.140, 0.160, 0.200, 0.240, 0.260, 0.270, 0.280, 0.290, 0.300, 0.300, 0.370, 0.330),
    "waste_dump":     (0.140, 0.160, 0.200, 0.240, 0.260, 0.270, 0.280, 0.290, 0.300, 0.300, 0.380, 0.340),
    "haul_road":      (0.150, 0.170, 0.210, 0.250, 0.270, 0.280, 0.290, 0.300, 0.310, 0.310, 0.370, 0.330),
    # dark ground: burnt land (low NIR, higher SWIR), silty water, and coal or black shale, dark in every band
    "burn_scar":      (0.030, 0.035, 0.050, 0.060, 0.075, 0.090, 0.100, 0.110, 0.115, 0.115, 0.180, 0.150),
    "turbid_water":   (0.070, 0.080, 0.100, 0.085, 0.060, 0.040, 0.032, 0.025, 0.022, 0.018, 0.010, 0.006),
    "coal_pit":       (0.040, 0.045, 0.050, 0.055, 0.060, 0.065, 0.068, 0.070, 0.072, 0.072, 0.080, 0.070),
    "coal_dump":      (0.070, 0.080, 0.095, 0.110, 0.120, 0.130, 0.135, 0.140, 0.145, 0.145, 0.170, 0.150),
}
HAZE_SHAPE = np.array((1.0, 0.9, 0.7, 0.5, 0.4, 0.32, 0.27, 0.22, 0.2, 0.18, 0.05, 0.02), dtype=np.float32)

# landscape -> share of (forest, grass, bare_field, water, urban, natural_bare) in the background
LANDSCAPES = {
    "temperate": (0.40, 0.30, 0.12, 0.08, 0.06, 0.04),
    "arid":      (0.04, 0.12, 0.10, 0.03, 0.05, 0.66),
    "tropical":  (0.62, 0.18, 0.06, 0.07, 0.05, 0.02),
    "mixed":     (0.25, 0.25, 0.15, 0.07, 0.08, 0.20),
}


@dataclass(frozen=True)
class DomainShift:
    """How a scene's sensor, atmosphere, season, landscape and mines look (1.0/0.0 = neutral)."""
    gain: tuple = (1.0,) * 12       # per-band radiometric gain (or one value for all bands)
    haze: float = 0.0               # additive path radiance at B01, falling towards SWIR
    season: str = "summer"          # summer | winter | dry: vegetation vigour and bare fields
    landscape: str = "temperate"    # key of LANDSCAPES
    mine_brightness: float = 1.0    # scales mine reflectance (fresh vs weathered material)
    terrace_contrast: float = 1.0   # strength of bench terracing in pits
    noise: float = 0.006            # sensor noise, reflectance units
    spectral_jitter: float = 0.0    # each material's spectrum x U(1-j, 1+j) per band: other spectral libraries
    dark_mines: float = 0.0         # share of mines dug in dark ground (coal, shale); adds dark negatives
    mine_size: float = 1.0          # scales mines' radius (1.0: 5-16 % of the scene's shorter side)

    def band_gain(self):
        gain = np.asarray(self.gain, dtype=np.float32)
        return np.broadcast_to(gain, (12,)) if gain.size == 1 else gain


@dataclass
class SyntheticScene:
    image: np.ndarray        # uint16 [12, H, W] reflectance x 10000 (+1000 with the L2A offset), 0 = nodata
    fine: np.ndarray         # uint8 [H, W] exact mine footprint
    coarse: np.ndarray       # uint8 [H, W] generalised inventory outline
    kinds: np.ndarray        # uint8 [H, W] class index into CLASSES
    transform: object        # affine.Affine
    crs: str
    l2a_offset: bool
    band_names: tuple = BAND_NAMES
    nodata: int = 0
    shift: DomainShift = field(default_factory=DomainShift)


def smooth_field(rng, shape, scale):
    """Spatially correlated noise, zero mean and unit std, with features about ``scale`` pixels across."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * scale / 2.5) ** 2 * (fx ** 2 + fy ** 2))
    out = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)


def _blur(stack, sigma):
    """Gaussian blur of [..., H, W] arrays (FFT, wrap-around edges are negligible for sigma ~ 1 px)."""
    h, w = stack.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    return np.fft.irfft2(np.fft.rfft2(stack) * kernel, s=(h, w)).astype(np.float32)


def _polygon_mask(shape, vertices):
    """Boolean mask of pixels whose centres fall inside the polygon ``vertices`` [(row, col), ...]."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    rows, cols = rows + 0.5, cols + 0.5
    inside = np.zeros(shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (r1, c1), (r2, c2) = vertices[i], vertices[(i + 1) % n]
        crosses = (r1 > rows) != (r2 > rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (c2 - c1) * (rows - r1) / (r2 - r1) + c1
        inside ^= crosses & (cols < at)
    return inside


def _random_polygon(rng, centre, radius, corners, jitter):
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * (1 + rng.uniform(-jitter, jitter, corners))
    return [(centre[0] + r * np.sin(a), centre[1] + r * np.cos(a)) for a, r in zip(angles, radii)]


def _line_mask(shape, start, end, width):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    (r1, c1), (r2, c2) = start, end
    dr, dc = r2 - r1, c2 - c1
    length2 = dr * dr + dc * dc + 1e-9
    t = np.clip(((rows - r1) * dr + (cols - c1) * dc) / length2, 0, 1)
    return np.hypot(rows - (r1 + t * dr), cols - (c1 + t * dc)) <= width / 2


def _dilate(mask, radius):
    """Binary dilation by a disc of ``radius`` pixels (via blur threshold; exact enough for labels)."""
    if radius <= 0:
        return mask.copy()
    return _blur(mask.astype(np.float32), radius / 2.0) > 0.08


def _background(rng, shape, shift):
    kinds = np.zeros(shape, dtype=np.uint8)
    shares = np.asarray(LANDSCAPES[shift.landscape])
    shares = shares * rng.uniform(0.6, 1.4, shares.size)
    shares /= shares.sum()
    order = ("forest", "grass", "bare_field", "water", "urban", "natural_bare")
    # each cover has its own smooth field; a pixel takes the cover whose biased field is highest
    fields = np.stack([smooth_field(rng, shape, rng.uniform(20, 60)) for _ in order])
    bias = 1.3 * np.log(shares * len(order))[:, None, None]
    zone = np.argmax(fields + bias, axis=0)
    for index, name in enumerate(order):
        kinds[zone == index] = CLASSES.index(name)
    # fields: rectangular parcels of grass/bare alternating inside farmland
    parcel = rng.integers(12, 40)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    parcels = ((rows // parcel) * 7919 + (cols // (parcel + rng.integers(0, 20)))) % 5
    farm = np.isin(kinds, (CLASSES.index("grass"), CLASSES.index("bare_field")))
    bare_share = {"summer": 1, "winter": 3, "dry": 4}[shift.season]
    kinds[farm] = np.where(parcels[farm] < bare_share, CLASSES.index("bare_field"), CLASSES.index("grass"))
    # towns: street grid of bright blocks
    urban = kinds == CLASSES.index("urban")
    streets = ((rows % rng.integers(6, 12)) == 0) | ((cols % rng.integers(6, 12)) == 0)
    kinds[urban & streets] = CLASSES.index("natural_bare") if rng.random() < 0.3 else CLASSES.index("urban")
    # rivers: a meandering line of water
    if rng.random() < 0.6:
        start = (rng.uniform(0, shape[0]), 0.0)
        end = (rng.uniform(0, shape[0]), float(shape[1]))
        kinds[_line_mask(shape, start, end, rng.uniform(2, 6))] = CLASSES.index("water")
    # rock outcrops: small bright knobs, the hardest negatives; where mines can be dark, dark ones too
    for _ in range(rng.integers(0, 6)):
        _paint_blob(rng, kinds, "rock_outcrop", (4, 25))
    if shift.dark_mines:
        _paint_dark_negatives(rng, kinds, rows, cols)
    return kinds


def _paint_blob(rng, kinds, name, radius):
    """Paint an irregular blob of class ``name``, ``radius`` (min, max) px, somewhere on ``kinds``."""
    centre = rng.uniform(0, kinds.shape[0]), rng.uniform(0, kinds.shape[1])
    kinds[_polygon_mask(kinds.shape, _random_polygon(rng, centre, rng.uniform(*radius), 9, 0.5))] = \
        CLASSES.index(name)


def _paint_dark_negatives(rng, kinds, rows, cols):
    """Burn scars, silty lakes and, on some scenes, a coast: what a model that knows dark mines must not call one."""
    for _ in range(rng.integers(0, 3)):
        _paint_blob(rng, kinds, "burn_scar", (10, 45))
    for _ in range(rng.integers(0, 2)):
        _paint_blob(rng, kinds, "turbid_water", (10, 40))
    if rng.random() < 0.3:  # the sea beyond a straight coast, over 10-35 % of the scene
        angle = rng.uniform(0, 2 * np.pi)
        across = rows * np.sin(angle) + cols * np.cos(angle)
        sea = across > np.quantile(across, 1 - rng.uniform(0.1, 0.35))
        kinds[sea] = CLASSES.index("turbid_water" if rng.random() < 0.5 else "water")


def _paint_mine(rng, kinds, terrace, shape, dark=False, scale=1.0):
    """Paint one mine's parts on ``kinds`` (and bench phase on ``terrace``), its pit and dumps in coal if ``dark``,
    its radius ``scale`` x 5-16 % of the scene's shorter side; returns its fine footprint."""
    pit_class, dump_class = ("coal_pit", "coal_dump") if dark else ("pit", "waste_dump")
    size = min(shape)
    radius = min(rng.uniform(0.05, 0.16) * scale, 0.45) * size
    centre = np.array([rng.uniform(radius, shape[0] - radius), rng.uniform(radius, shape[1] - radius)])
    footprint = np.zeros(shape, dtype=bool)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    parts = []
    # open pit: a rotated ellipse with concentric benches
    a, b = radius * rng.uniform(0.5, 0.9), radius * rng.uniform(0.35, 0.7)
    angle = rng.uniform(0, np.pi)
    dr, dc = rows - centre[0], cols - centre[1]
    u = (dr * np.cos(angle) + dc * np.sin(angle)) / a
    v = (-dr * np.sin(angle) + dc * np.cos(angle)) / b
    distance = np.sqrt(u * u + v * v)
    pit = distance <= 1.0
    kinds[pit] = CLASSES.index(pit_class)
    benches = rng.integers(3, 8)
    terrace[pit] = np.cos(2 * np.pi * distance[pit] * benches)
    if rng.random() < 0.4:
        kinds[distance <= rng.uniform(0.15, 0.4)] = CLASSES.index("pit_lake")
    footprint |= pit
    parts.append(centre)
    # satellites: dumps and tailings ponds around the pit
    for _ in range(rng.integers(1, 4)):
        direction = rng.uniform(0, 2 * np.pi)
        distance_px = radius * rng.uniform(1.0, 1.7)
        where = centre + distance_px * np.array([np.sin(direction), np.cos(direction)])
        where = np.clip(where, 5, np.array(shape) - 5)
        part_radius = radius * rng.uniform(0.25, 0.6)
        polygon = _polygon_mask(shape, _random_polygon(rng, where, part_radius, rng.integers(4, 8), 0.3))
        if rng.random() < 0.45:
            rim = _dilate(polygon, 2) & ~polygon
            kinds[rim] = CLASSES.index("dam")
            kinds[polygon] = CLASSES.index("tailings_water" if rng.random() < 0.5 else "tailings")
            footprint |= polygon | rim
        else:
            kinds[polygon] = CLASSES.index(dump_class)
            terrace[polygon] = smooth_field(rng, shape, 3.0)[polygon] * 0.5
            footprint |= polygon
        parts.append(where)
    # haul roads join the parts and lead out of the mine
    for start, end in zip(parts[:-1], parts[1:]):
        road = _line_mask(shape, start, end, rng.uniform(1.5, 3.5))
        kinds[road & ~footprint] = CLASSES.index("haul_road")
        footprint |= road
    return footprint


def _coarse_outline(rng, fine_mine, shape, pixel_size):
    """Inventory-style outline of one mine: buffered hull, generalised, offset, sometimes missing a part."""
    buffer_px = rng.uniform(40, 150) / pixel_size
    outline = _dilate(fine_mine, buffer_px)
    rows, cols = np.nonzero(outline)
    if rows.size == 0:
        return outline
    # generalise: the convex hull of the buffered shape, as inventories digitise on coarse imagery
    points = np.stack([rows, cols], axis=1).astype(np.float32)
    hull = _convex_hull(points[:: max(1, len(points) // 2000)])
    coarse = _polygon_mask(shape, [tuple(p) for p in hull])
    shift = rng.normal(0, 30 / pixel_size, 2).round().astype(int)
    coarse = np.roll(coarse, tuple(shift), axis=(0, 1))
    if rng.random() < 0.25:  # an outlying part missed by the inventory
        cut_row = rng.uniform(rows.min(), rows.max())
        coarse &= (np.arange(shape[0])[:, None] < cut_row) if rng.random() < 0.5 else \
            (np.arange(shape[0])[:, None] >= cut_row)
    return coarse


def _convex_hull(points):
    """Monotone chain convex hull of [N, 2] points."""
    pts = sorted(map(tuple, points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _reflectance(rng, kinds, terrace, shift):
    shape = kinds.shape
    # the dark classes' spectra are drawn only for scenes that can have them, so that other scenes stay as they were
    spectra = np.array([SPECTRA[name] for name in CLASSES[:None if shift.dark_mines else -len(DARK_CLASSES)]])
    if shift.spectral_jitter:  # drawn only when set, so that scenes without it stay as they were
        spectra = spectra * rng.uniform(1 - shift.spectral_jitter, 1 + shift.spectral_jitter, spectra.shape)
    spectra = spectra.astype(np.float32) * rng.uniform(0.9, 1.1, (len(spectra), 1)).astype(np.float32)  # variety
    mine = np.isin(kinds, [CLASSES.index(c) for c in MINE_CLASSES])
    vegetation = np.isin(kinds, [CLASSES.index("forest"), CLASSES.index("grass")])
    image = spectra[kinds].transpose(2, 0, 1).copy()  # [12, H, W]
    # texture: brightness varies smoothly within every cover, at two scales
    texture = 0.08 * smooth_field(rng, shape, 6.0) + 0.05 * smooth_field(rng, shape, 1.5)
    image *= 1.0 + texture[None]
    # season: vegetation vigour (red edge and NIR) and green-up
    vigour = {"summer": 1.0, "winter": 0.55, "dry": 0.7}[shift.season]
    nir = np.array([0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1, 0.6, 0.4], dtype=np.float32)[:, None]
    image[:, vegetation] *= (1.0 + (vigour - 1.0) * nir)
    # mines: bench terracing (shadowed risers, lit treads) and material brightness
    image[:, mine] *= shift.mine_brightness * (1.0 + 0.18 * shift.terrace_contrast * terrace[mine])[None]
    image = _blur(image, 0.6)  # mixed pixels at edges
    image = image * shift.band_gain()[:, None, None] + shift.haze * HAZE_SHAPE[:, None, None]
    image += rng.normal(0.0, shift.noise, image.shape).astype(np.float32)
    return np.clip(image, 0.0005, 1.2)


def make_scene(size=512, seed=0, pixel_size=10.0, crs="EPSG:32633", shift=DomainShift(), l2a_offset=False,
               mines=None, nodata_stripe=False, height=None):
    """A :class:`SyntheticScene` of ``size`` x ``size`` pixels (or ``height`` x ``size``); ``mines`` fixes the
    number of mines (default 0-3 at random, at least 1 half of the time)."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    shape = (int(height or size), int(size))
    kinds = _background(rng, shape, shift)
    terrace = np.zeros(shape, dtype=np.float32)
    fine = np.zeros(shape, dtype=bool)
    coarse = np.zeros(shape, dtype=bool)
    count = int(rng.choice([0, 1, 1, 2, 2, 3])) if mines is None else int(mines)
    for _ in range(count):
        dark = bool(shift.dark_mines) and rng.random() < shift.dark_mines
        mine = _paint_mine(rng, kinds, terrace, shape, dark, shift.mine_size)
        fine |= mine
        coarse |= _coarse_outline(rng, mine, shape, pixel_size)
    reflectance = _reflectance(rng, kinds, terrace, shift)
    dn = reflectance * 10000.0 + (L2A_OFFSET_DN if l2a_offset else 0)
    image = np.clip(np.round(dn), 1, 65535).astype(np.uint16)
    if nodata_stripe:
        image[:, :, : shape[1] // 10] = 0
        fine[:, : shape[1] // 10] = False
        coarse[:, : shape[1] // 10] = False
    origin_x = 500000.0 + rng.integers(-2000, 2000) * pixel_size
    origin_y = 5800000.0 + rng.integers(-2000, 2000) * pixel_size
    return SyntheticScene(image, fine.astype(np.uint8), coarse.astype(np.uint8), kinds,
                          from_origin(origin_x, origin_y, pixel_size, pixel_size), crs, l2a_offset, shift=shift)


def write_scene(scene, out_dir, stem="scene"):
    """Write the image, both masks (GeoTIFF) and both label layers (GeoPackage); returns their paths."""
    import rasterio

    from .vectorize import write_polygons_gpkg

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count, height, width = scene.image.shape
    grid = {"driver": "GTiff", "width": width, "height": height, "crs": scene.crs, "transform": scene.transform,
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    paths = {"image": out_dir / f"{stem}.tif"}
    with rasterio.open(paths["image"], "w", count=count, dtype="uint16", nodata=scene.nodata, predictor=2,
                       **grid) as dst:
        dst.write(scene.image)
        for index, (name, wavelength) in enumerate(zip(scene.band_names, WAVELENGTHS_NM), start=1):
            dst.set_band_description(index, name)
            dst.update_tags(index, name=name, wavelength_nm=str(wavelength))
        dst.update_tags(SENSOR="Sentinel-2 (synthetic)", PROCESSING="L2A synthetic, reflectance x 10000",
                        BOA_ADD_OFFSET=str(-L2A_OFFSET_DN if scene.l2a_offset else 0),
                        BOA_QUANTIFICATION_VALUE="10000")
    for label in ("fine", "coarse"):
        mask = getattr(scene, label)
        paths[f"{label}_mask"] = out_dir / f"{stem}_{label}.tif"
        with rasterio.open(paths[f"{label}_mask"], "w", count=1, dtype="uint8", **grid) as dst:
            dst.write(mask, 1)
        geoms = label_polygons(mask, scene.transform)
        paths[f"{label}_polygons"] = out_dir / f"{stem}_{label}.gpkg"
        write_polygons_gpkg(paths[f"{label}_polygons"], geoms, rasterio.crs.CRS.from_user_input(scene.crs).to_wkt(),
                            {"label": [label] * len(geoms)}, layer=f"{label}_labels", field_types={"label": str})
    return paths


def write_scene_set(out_dir, count, seed, size, shift_for, label, offset_every=3, stem=None, is_canceled=None):
    """``count`` scenes side by side on one UTM grid (disjoint, so one polygon layer labels them all): scene k
    draws its shift from ``shift_for(rng)`` and has the L2A offset when ``k % offset_every == 1``. Writes
    them and ``<stem>_<label>.gpkg`` with every scene's ``label`` ("fine" or "coarse") polygons; returns
    (image paths, that GeoPackage, per-scene path dicts). Raises Cancelled before a scene when ``is_canceled()``."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from .vectorize import write_polygons_gpkg

    stem = stem or label
    rng = np.random.default_rng(seed)
    written, geoms = [], []
    for k in range(count):
        if is_canceled and is_canceled():
            raise Cancelled(f"scene generation cancelled after {k} of {count} scenes")
        scene = make_scene(size, seed=seed * 1000 + k, shift=shift_for(rng), l2a_offset=(k % offset_every == 1),
                           mines=int(rng.integers(1, 4)))
        scene.transform = from_origin(500000.0 + k * (size + 64) * 10.0, 5800000.0, 10.0, 10.0)
        paths = write_scene(scene, out_dir, f"{stem}_{k:02d}")
        written.append(paths)
        geoms += label_polygons(getattr(scene, label), scene.transform)
    merged = Path(out_dir) / f"{stem}_{label}.gpkg"
    write_polygons_gpkg(merged, geoms, CRS.from_user_input(scene.crs).to_wkt(),
                        {"label": [label] * len(geoms)}, layer=f"{label}_labels", field_types={"label": str})
    return [p["image"] for p in written], merged, written


def label_polygons(mask, transform):
    """Shapely polygons of the 1-pixels of ``mask``."""
    import rasterio.features
    import shapely

    return [shapely.geometry.shape(geom) for geom, value in
            rasterio.features.shapes(mask, mask=mask.astype(bool), transform=transform) if value == 1]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic Sentinel-2 L2A-like scene with mine labels.")
    parser.add_argument("out_dir")
    parser.add_argument("--stem", default="scene")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mines", type=int, help="number of mines (default: random 0-3)")
    parser.add_argument("--landscape", choices=sorted(LANDSCAPES), default="temperate")
    parser.add_argument("--offset", action="store_true", help="add the L2A +1000 DN offset (baseline >= 04.00)")
    args = parser.parse_args(argv)
    scene = make_scene(args.size, args.seed, shift=DomainShift(landscape=args.landscape), l2a_offset=args.offset,
                       mines=args.mines)
    for role, path in write_scene(scene, args.out_dir, args.stem).items():
        print(f"{role}: {path}")


if __name__ == "__main__":
    main()
