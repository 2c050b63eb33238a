"""End to end: scripts/package.sh builds the zip, the zip is unpacked into a fresh QGIS profile (temporary HOME)
with the plugin enabled, and `qgis_process run` segments the known scene and fine-tunes the bundled model headless
with it."""

import configparser
import subprocess
import sysconfig
import zipfile
from pathlib import Path

import pytest
from known_scene import BLOCK_AREAS_HA
from qgis.core import QgsVectorLayer

ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's qgis_process wrapper adds a flag 3.22 rejects


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "minec2f_qgis.zip"
    subprocess.run([str(ROOT / "scripts" / "package.sh"), str(out)], check=True, capture_output=True)
    return out


def test_zip_holds_one_plugin_folder_with_the_engine_and_resources(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"minec2f_qgis"}
    for required in ("__init__.py", "metadata.txt", "algorithms/segment.py", "model_core/pipeline.py",
                     "model_core/paths.py", "resources/styles/probability.qml", "resources/icons/minec2f.png"):
        assert f"minec2f_qgis/{required}" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") or "/tests/" in name or ".venv" in name
                   for name in names)
    metadata = configparser.ConfigParser()
    metadata.read_string(zipfile.ZipFile(plugin_zip).read("minec2f_qgis/metadata.txt").decode())
    assert metadata["general"]["qgisMinimumVersion"] == "3.22"
    assert metadata["general"]["hasProcessingProvider"] == "yes"
    assert f"minec2f_qgis/{metadata['general']['icon']}" in names


def test_zip_holds_what_pb_tool_cfg_lists_and_the_licence(plugin_zip):
    """pb_tool.cfg describes the plugin folder (pb_tool deploys from it); the zip must hold exactly that."""
    config = configparser.ConfigParser()
    config.read(ROOT / "pb_tool.cfg")
    entries = [name for key in ("python_files", "extras", "extra_dirs") for name in config["files"][key].split()]
    archive = zipfile.ZipFile(plugin_zip)
    names = [name.removeprefix("minec2f_qgis/") for name in archive.namelist()]
    for entry in entries:
        assert entry in names or any(name.startswith(f"{entry}/") for name in names), entry
    assert all(any(name == entry or name.startswith(f"{entry}/") for entry in entries) for name in names)
    assert "GNU GENERAL PUBLIC LICENSE" in archive.read("minec2f_qgis/LICENSE").decode()
    plugin_modules = {path.name for path in (ROOT / "minec2f_qgis").glob("*.py")}
    assert plugin_modules <= set(config["files"]["python_files"].split())  # no module left out of the plugin


@pytest.fixture
def qgis_process(plugin_zip, tmp_path):
    """Runs ``qgis_process.bin run ALGORITHM -- KEY=VALUE ...`` with the zip installed in a fresh profile."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process.bin is not installed")
    home = tmp_path / "home"
    profile = home / ".local/share/QGIS/QGIS3/profiles/default"
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nminec2f_qgis=true\n")
    zipfile.ZipFile(plugin_zip).extractall(profile / "python" / "plugins")
    # Only the venv's packages (torch, smp, ...) on the path: model_core must come from the installed plugin.
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen",
           "PYTHONPATH": sysconfig.get_paths()["purelib"], "LANG": "C.UTF-8"}

    def run(algorithm, **parameters):
        completed = subprocess.run([QGIS_PROCESS, "run", algorithm, "--", *(f"{k}={v}" for k, v in parameters.items())],
                                   env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
        return completed.stdout

    return run


def test_qgis_process_segments_with_the_installed_plugin(qgis_process, known_scene, constant_bundle_path, tmp_path):
    out = tmp_path / "out"
    footprints = out / "footprints.gpkg"

    stdout = qgis_process("minec2f:segment", INPUT=known_scene, MODEL=constant_bundle_path,
                          OUTPUT_PROBABILITY=out / "prob.tif", OUTPUT_MASK=out / "mask.tif",
                          OUTPUT_FOOTPRINTS=footprints)

    assert "FOOTPRINT_COUNT:\t2" in stdout
    layer = QgsVectorLayer(f"{footprints}|layername=footprints", "footprints", "ogr")
    assert sorted(f["area_ha"] for f in layer.getFeatures()) == pytest.approx(sorted(BLOCK_AREAS_HA), rel=0.01)
    # the model's outputs chained headless: footprints of 5 ha or more, and the mask scored against the footprints
    stdout = qgis_process("minec2f:polygonize", INPUT=out / "prob.tif", MIN_AREA_HA=5,
                          OUTPUT_FOOTPRINTS=out / "big.gpkg")
    assert "FOOTPRINT_COUNT:\t1" in stdout
    stdout = qgis_process("minec2f:evaluate", PREDICTION=out / "mask.tif", REFERENCE=footprints)
    scores = dict(line.split(":\t") for line in stdout.splitlines() if ":\t" in line)
    assert float(scores["IOU"]) == pytest.approx(1.0, abs=0.01)


def test_qgis_process_finetunes_the_bundled_model_when_no_teacher_is_given(qgis_process, tmp_path):
    from model_core.bundle import file_sha256, read_spec
    from model_core.paths import DEFAULT_MODEL
    from model_core.synthetic import make_scene, write_scene

    scene = write_scene(make_scene(192, seed=3, mines=2), tmp_path / "scene", "scene")
    out = tmp_path / "student.safetensors"

    stdout = qgis_process("minec2f:finetune_student", RASTERS=scene["image"], POLYGONS=scene["fine_polygons"],
                          EPOCHS=1, BATCH=2, CHIP_SIZE=64, REHEARSAL_SCENES=0, OUTPUT_MODEL=out)

    assert "BEST_EPOCH:" in stdout
    spec = read_spec(out)
    assert f"METHOD_USED:\t{spec.method}" in stdout
    assert (spec.role, spec.parent_hash) == ("student", file_sha256(DEFAULT_MODEL))


ENGINE_RELOAD = """
import importlib.util, sys
from pathlib import Path
import minec2f_qgis, model_core
folder = Path(sys.argv[1]) / "minec2f_qgis"
assert Path(model_core.__file__).parent == folder / "model_core", model_core.__file__
assert str(folder) not in sys.path
for name in ("resources", "models", "plugin", "provider", "dock", "dependencies", "algorithms", "layers"):
    spec = importlib.util.find_spec(name)
    assert spec is None or not str(spec.origin).startswith(str(folder)), name
import model_core.paths
(folder / "model_core" / "__init__.py").write_text('__version__ = "upgraded"')  # as an upgrade over it would
minec2f_qgis.unload_engine()
assert not [name for name in sys.modules if name.split(".")[0] == "model_core"]
minec2f_qgis.import_engine()
import model_core.paths
print(model_core.__version__, Path(model_core.paths.__file__).parent == folder / "model_core")
(folder / "model_core" / "__init__.py").write_text('__version__ = "again"')
minec2f_qgis.import_engine()  # as a reload after a version whose unload() left its engine imported
import model_core
print(model_core.__version__, "model_core.paths" not in sys.modules)
"""


def test_installed_plugin_shadows_no_module_and_reloads_its_engine(plugin_zip, tmp_path):
    """The plugin folder is not put on sys.path, where its modules (resources, models, plugin, ...) would shadow
    other plugins' imports; its engine is imported from it, and forgotten on unload so that a reloaded or upgraded
    plugin runs the new engine, not the one imported before."""
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    run = subprocess.run(["/usr/bin/python3", "-c", ENGINE_RELOAD, str(plugins)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(plugins), "PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["upgraded", "True", "again", "True"]
