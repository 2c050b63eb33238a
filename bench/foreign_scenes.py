"""The bundled model on scenes from a second generator, written apart from ``model_core.synthetic``.

Independent checks score the model on scenes "from another generator"; this one is built on other choices, so
that a model shaped by our own generator's look shows it here. Land cover is a Voronoi mosaic of parcels with
a river and lakes, towns are blocks of buildings; each class's spectrum is drawn around a library-like mean with
a per-scene spread. Mines are elliptical pits with concentric benches (some dark coal pits, some with a lake),
lobed waste dumps, rectangular tailings ponds with a dam and haul roads between them. Half the scenes carry the
Sentinel-2 L2A +1000 DN offset without any metadata saying so; band descriptions are left out on every third.

    .venv/bin/python bench/foreign_scenes.py [--model BUNDLE] [--scenes 8] [--size 768] [--seed 0] [--keep DIR]
        [--finetune ["CLI OPTIONS"]]

Prints, per scene and overall, IoU, F1, precision and recall of ``segment`` (the CLI's defaults, float32)
against the true footprints, and the recall of each kind of mine ground. With ``--finetune``, the model is also
fine-tuned (``python -m model_core finetune``, its defaults plus the options given) on the true polygons of each
scene A that has a scene B of the same landscape 4 seeds on, and both are scored on B: what an analyst who
digitises one scene gets on the next.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core import paths  # noqa: E402
from model_core.metrics import segmentation_scores  # noqa: E402
from model_core.pipeline import segment_scene  # noqa: E402
from model_core.synthetic import label_polygons  # noqa: E402
from model_core.vectorize import write_polygons_gpkg  # noqa: E402

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
# mean reflectance at B02, B03, B04, B08, B11, B12; the other bands are interpolated from these
ANCHORS = {
    "broadleaf":      (0.030, 0.060, 0.035, 0.400, 0.200, 0.090),
    "conifer":        (0.020, 0.040, 0.022, 0.250, 0.120, 0.050),
    "green_crop":     (0.040, 0.080, 0.045, 0.450, 0.250, 0.120),
    "stubble":        (0.090, 0.120, 0.160, 0.240, 0.320, 0.260),
    "dry_grass":      (0.070, 0.100, 0.130, 0.280, 0.350, 0.250),
    "clear_water":    (0.050, 0.040, 0.020, 0.010, 0.005, 0.003),
    "turbid_water":   (0.080, 0.100, 0.090, 0.040, 0.010, 0.005),
    "roof":           (0.110, 0.120, 0.130, 0.200, 0.230, 0.200),
    "asphalt":        (0.060, 0.070, 0.080, 0.100, 0.130, 0.120),
    "sand":           (0.180, 0.240, 0.300, 0.360, 0.450, 0.400),
    "rock":           (0.120, 0.150, 0.180, 0.220, 0.280, 0.250),
    # mine ground
    "pit_rock":       (0.140, 0.170, 0.230, 0.280, 0.340, 0.300),
    "coal":           (0.050, 0.060, 0.070, 0.090, 0.100, 0.080),
    "pit_water":      (0.070, 0.110, 0.090, 0.030, 0.008, 0.004),
    "waste":          (0.160, 0.190, 0.230, 0.270, 0.330, 0.290),
    "tailings":       (0.250, 0.280, 0.300, 0.320, 0.350, 0.300),
    "tailings_water": (0.090, 0.130, 0.100, 0.050, 0.020, 0.010),
    "road":           (0.170, 0.200, 0.240, 0.280, 0.330, 0.300),
}
MINE_GROUND = ("pit_rock", "coal", "pit_water", "waste", "tailings", "tailings_water", "road")
LANDSCAPES = {  # parcel classes and their weights
    "farmland": {"green_crop": 4, "stubble": 3, "broadleaf": 2, "dry_grass": 1},
    "forest": {"broadleaf": 3, "conifer": 4, "dry_grass": 1, "stubble": 1},
    "desert": {"sand": 5, "rock": 3, "dry_grass": 2},
    "savanna": {"dry_grass": 5, "broadleaf": 1, "sand": 2, "stubble": 1},
}
ZONES = ("EPSG:32612", "EPSG:32735", "EPSG:32650", "EPSG:32719", "EPSG:32637", "EPSG:32755")


def landscape_of(seed):
    """Scenes 4 seeds apart share a landscape."""
    return list(LANDSCAPES)[seed % len(LANDSCAPES)]


def spectrum(name, rng, spread):
    """12-band reflectance of ``name``, its anchors scaled by a per-scene random factor within ``spread``."""
    b02, b03, b04, b08, b11, b12 = np.asarray(ANCHORS[name]) * rng.uniform(1 - spread, 1 + spread, 6)
    red_edge = np.interp([705, 740, 783], [665, 842], [b04, b08])
    return np.array([b02 * 1.05, b02, b03, b04, *red_edge, b08, b08 * 1.02, b08 * 0.9, b11, b12], np.float32)


def voronoi_labels(rng, size, cells):
    """Parcel index per pixel: a Voronoi mosaic of ``cells`` random seeds, its borders roughened by noise."""
    seeds = rng.uniform(0, size, (cells, 2))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, (2, size, size)), (0, 6, 6)) * 40
    rows, cols = rows + wobble[0], cols + wobble[1]
    best = np.full((size, size), np.inf, np.float32)
    label = np.zeros((size, size), np.int32)
    for i, (r, c) in enumerate(seeds):
        distance = (rows - r) ** 2 + (cols - c) ** 2
        closer = distance < best
        best[closer], label[closer] = distance[closer], i
    return label


def ellipse(centre, axes, angle, rows_cols):
    """Normalised elliptical radius (1 on the rim) around ``centre``."""
    rows, cols = rows_cols
    dr, dc = rows - centre[0], cols - centre[1]
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)


def polyline(points, width, rows_cols):
    """Pixels within ``width`` / 2 of the polyline through ``points``."""
    rows, cols = rows_cols
    near = np.zeros(rows.shape, bool)
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        d = np.array([r1 - r0, c1 - c0], np.float32)
        t = np.clip(((rows - r0) * d[0] + (cols - c0) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        near |= (rows - r0 - t * d[0]) ** 2 + (cols - c0 - t * d[1]) ** 2 <= (width / 2) ** 2
    return near


def make_foreign_scene(seed, size=768, pixel_m=10.0):
    """(reflectance [12, size, size] float32, footprint mask, ground-class map, class names)."""
    rng = np.random.default_rng(seed)
    landscape = landscape_of(seed)
    rc = np.mgrid[0:size, 0:size].astype(np.float32)
    names = list(ANCHORS)
    weights = LANDSCAPES[landscape]
    parcels = voronoi_labels(rng, size, int(rng.integers(40, 90)))
    parcel_class = rng.choice([names.index(n) for n in weights], parcels.max() + 1,
                              p=np.array(list(weights.values())) / sum(weights.values()))
    ground = parcel_class[parcels]
    if landscape != "desert" or rng.random() < 0.3:  # a meandering river
        t = np.linspace(0, 1, 12)
        river = np.stack([t * size, size * (0.5 + 0.25 * np.sin(t * rng.uniform(3, 7) + rng.uniform(0, 6)))], 1)
        ground[polyline(river[:, ::-1] if rng.random() < 0.5 else river, rng.uniform(3, 8), rc)] = \
            names.index(str(rng.choice(["clear_water", "turbid_water"])))
    for _ in range(int(rng.integers(0, 3))):  # lakes
        lake = ellipse(rng.uniform(0, size, 2), rng.uniform(8, 30, 2), rng.uniform(0, np.pi), rc)
        ground[lake < 1] = names.index("clear_water")
    for _ in range(int(rng.integers(1, 3))):  # towns: streets and roofs
        town = ellipse(rng.uniform(0, size, 2), rng.uniform(20, 50, 2), 0.0, rc) < 1
        blocks = ((rc[0] // 4 + rc[1] // 5) % 3 > 0) & (rng.random((size, size)) < 0.95)
        ground[town] = np.where(blocks[town], names.index("roof"), names.index("asphalt"))

    footprint = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        centre = rng.uniform(0.15 * size, 0.85 * size, 2)
        axes = rng.uniform(150, 450, 2) / pixel_m
        angle = rng.uniform(0, np.pi)
        radius = ellipse(centre, axes, angle, rc)
        pit = radius < 1
        coal = rng.random() < 0.3
        benches = (np.floor(radius * axes.mean() / 3) % 2).astype(bool)  # 30 m benches
        ground[pit] = names.index("coal" if coal else "pit_rock")
        ground[pit & benches & (rng.random((size, size)) < 0.9)] = names.index("rock" if not coal else "asphalt")
        if rng.random() < 0.4:
            ground[radius < rng.uniform(0.25, 0.5)] = names.index("pit_water")
        parts = [pit]
        stops = [centre]
        for _ in range(int(rng.integers(1, 3))):  # lobed waste dumps next to the pit
            direction = rng.uniform(0, 2 * np.pi)
            offset = (axes.max() + rng.uniform(10, 35)) * np.array([np.sin(direction), np.cos(direction)])
            dump_centre = centre + offset
            angle_map = np.arctan2(rc[0] - dump_centre[0], rc[1] - dump_centre[1])
            lobes = 1 + 0.25 * np.sin(rng.integers(3, 6) * angle_map + rng.uniform(0, 6))
            dump = ellipse(dump_centre, rng.uniform(10, 25, 2), rng.uniform(0, np.pi), rc) < lobes
            ground[dump] = names.index("coal" if coal and rng.random() < 0.5 else "waste")
            parts.append(dump)
            stops.append(dump_centre)
        if rng.random() < 0.6:  # a tailings pond: pale beach, water, a dam around it
            pond_centre = centre + rng.uniform(-1, 1, 2) * (axes.max() + 40)
            half = rng.uniform(12, 30, 2)
            outer = (np.abs(rc[0] - pond_centre[0]) < half[0] + 2) & (np.abs(rc[1] - pond_centre[1]) < half[1] + 2)
            inner = (np.abs(rc[0] - pond_centre[0]) < half[0]) & (np.abs(rc[1] - pond_centre[1]) < half[1])
            ground[outer] = names.index("waste")
            ground[inner] = names.index("tailings")
            ground[inner & (rc[1] - pond_centre[1] > -half[1] * 0.3)] = names.index("tailings_water")
            parts.append(outer)
            stops.append(pond_centre)
        for stop in stops[1:]:  # haul roads, 15-25 m wide
            bend = (centre + stop) / 2 + rng.normal(0, 15, 2)
            road = polyline([centre, bend, stop], rng.uniform(1.5, 2.5), rc)
            ground[road & ~np.logical_or.reduce(parts)] = names.index("road")
            parts.append(road)
        footprint |= np.logical_or.reduce(parts)

    spread = rng.uniform(0.1, 0.25)
    spectra = np.stack([spectrum(name, rng, spread) for name in names])  # [classes, 12]
    texture = 1 + ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * rng.uniform(0.2, 0.5)
    image = spectra[ground].transpose(2, 0, 1) * texture[None].astype(np.float32)
    image = ndimage.gaussian_filter(image, (0, 0.7, 0.7))  # the sensor's blur
    image += rng.normal(0, 0.004, image.shape).astype(np.float32)
    return np.clip(image, 0.0005, 1.0), footprint, ground, names


def write_foreign_scene(folder, stem, seed, size, pixel_m=10.0):
    """Scene ``seed`` as a uint16 L2A-like GeoTIFF (reflectance x 10000, + 1000 on odd seeds; band descriptions
    left out on every third) in a UTM zone picked by ``seed``, and its footprints as a GeoPackage.
    Returns (raster path, polygons path, footprint mask, ground map, class names)."""
    image, footprint, ground, names = make_foreign_scene(seed, size, pixel_m)
    dn = np.round(image * 10000 + (1000 if seed % 2 else 0)).astype(np.uint16)
    crs, transform = CRS.from_user_input(ZONES[seed % len(ZONES)]), from_origin(500000.0, 7000000.0, pixel_m, pixel_m)
    raster, polygons = folder / f"{stem}.tif", folder / f"{stem}_footprints_true.gpkg"
    with rasterio.open(raster, "w", driver="GTiff", count=12, height=size, width=size, dtype="uint16", crs=crs,
                       transform=transform, compress="deflate") as dst:
        dst.write(dn)
        if seed % 3 != 2:
            for i, name in enumerate(BANDS, start=1):
                dst.set_band_description(i, name)
    geoms = label_polygons(footprint.astype(np.uint8), transform)
    write_polygons_gpkg(polygons, geoms, crs.to_wkt(), {"label": ["mine"] * len(geoms)}, layer="footprints",
                        field_types={"label": str})
    return raster, polygons, footprint, ground, names


def segment_and_score(model, raster, truth, out):
    """Segment ``raster`` with ``model`` at the CLI's defaults (float32) -> (scores, predicted mask, reason)."""
    result = segment_scene(raster, model, out / "prob.tif", out / "mask.tif", out / "footprints.gpkg",
                           device="cpu", overwrite=True, precision="float32")
    with rasterio.open(result.mask_path) as src:
        pred = src.read(1) == 1
    return segmentation_scores(pred, truth), pred, result.radiometry_reason


def finetune(model, raster, polygons, out, options):
    """``python -m model_core finetune`` with its defaults on one scene; returns what its log says of the
    starting model's validation IoU and of what it chose."""
    run = subprocess.run([sys.executable, "-m", "model_core", "finetune", "--teacher", str(model), "--raster",
                          str(raster), "--polygons", str(polygons), "--out", str(out), "--overwrite", *options],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"fine-tuning on {raster.name} failed: {run.stderr.strip()[-2000:]}")
    said = []
    for line in run.stderr.splitlines() + run.stdout.splitlines():
        if line.startswith("starting model: val IoU"):
            said.append("start IoU " + line.split()[4])
        elif "method auto" in line or "no epoch beat" in line:
            said.append(line.split(": ", 1)[0])
    return said


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene")
    parser.add_argument("--finetune", nargs="*", metavar="OPTION",
                        help="also fine-tune the model with the CLI on each scene that has a scene of the same "
                             "landscape 4 seeds on, and score it there; words after it go to the CLI (quote them)")
    parser.add_argument("--keep", type=Path, help="write the scenes and outputs here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scenes = {seed: write_foreign_scene(work, f"foreign_{seed}_{landscape_of(seed)}", seed, args.size)
                  for seed in range(args.seed, args.seed + args.scenes)}
        ious = print_scores(args.model, scenes, work)
        if args.finetune is not None:
            options = [word for option in args.finetune for word in option.split()]
            print_finetuning(args.model, scenes, ious, work, options)
        if args.keep:
            print(f"scenes and outputs in {work}")


def print_scores(model, scenes, work):
    """Prints the model's scores on every scene; returns {seed: IoU}."""
    ious = {}
    totals = np.zeros(3, np.int64)  # true positives, false positives, false negatives
    ground_hits = {name: [0, 0] for name in MINE_GROUND}
    print(f"{model}: segment with the CLI's defaults, against the true footprints")
    print(f"{'scene':24}{'offset':>7}{'IoU':>7}{'F1':>7}{'prec':>7}{'recall':>7}{'mine %':>8}   radiometry")
    for seed, (raster, _, truth, ground, names) in scenes.items():
        scores, pred, reason = segment_and_score(model, raster, truth, work / f"{raster.stem}_out")
        ious[seed] = scores["iou"]
        totals += [np.sum(pred & truth), np.sum(pred & ~truth), np.sum(~pred & truth)]
        for name in MINE_GROUND:
            ground_hits[name][0] += int(np.sum(pred & truth & (ground == names.index(name))))
            ground_hits[name][1] += int(np.sum(truth & (ground == names.index(name))))
        print(f"{raster.stem:24}{'+1000' if seed % 2 else '0':>7}{scores['iou']:7.3f}{scores['f1']:7.3f}"
              f"{scores['precision']:7.3f}{scores['recall']:7.3f}{100 * truth.mean():8.1f}   {reason.split(' (')[0]}")
    tp, fp, fn = totals
    print(f"{'all (pooled pixels)':31}{tp / (tp + fp + fn):7.3f}{2 * tp / (2 * tp + fp + fn):7.3f}"
          f"{tp / max(tp + fp, 1):7.3f}{tp / max(tp + fn, 1):7.3f}")
    print("recall by mine ground: " + ", ".join(f"{name} {hit / total:.2f}" for name, (hit, total)
                                                in ground_hits.items() if total))
    return ious


def print_finetuning(model, scenes, ious, work, options):
    """Fine-tunes the model on scene A of each pair, prints its IoU on scene B beside the model's (``ious``)."""
    print(f"\nfine-tuned on scene A's true polygons (python -m model_core finetune {' '.join(options)}), "
          "IoU on scene B")
    print(f"{'scene A -> scene B':44}{'model':>8}{'student':>9}   choice")
    gains = []
    for seed_a in scenes:
        if seed_a + 4 not in scenes:
            continue
        raster_a, polygons_a = scenes[seed_a][:2]
        raster_b, _, truth_b = scenes[seed_a + 4][:3]
        student = work / f"{raster_a.stem}_student.safetensors"
        choice = finetune(model, raster_a, polygons_a, student, options)
        before = ious[seed_a + 4]
        after = segment_and_score(student, raster_b, truth_b, work / f"{student.stem}_out")[0]["iou"]
        gains.append(after - before)
        print(f"{raster_a.stem + ' -> ' + raster_b.stem:44}{before:8.3f}{after:9.3f}   "
              + "; ".join(choice))
    if gains:
        print(f"IoU change on scene B: mean {np.mean(gains):+.3f}, {min(gains):+.3f} to {max(gains):+.3f}")


if __name__ == "__main__":
    main()
