"""Missing engine packages: the plugin still loads, says what is missing with the pip command for QGIS's
Python, runs pip only on the user's yes, and the algorithm reports the same message instead of failing obscurely."""

import sys

import pytest
from qgis.core import QgsProcessingException
from qgis.PyQt.QtWidgets import QMessageBox

import processing
from minec2f_qgis import dependencies


@pytest.fixture
def torch_missing(monkeypatch):
    """Make ``import torch`` fail as if torch were not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.fixture
def question(monkeypatch):
    """Record QMessageBox.question calls and answer with ``question.answer``."""
    class Recorder:
        answer = QMessageBox.No
        calls = []

        def __call__(self, parent, title, text, *args):
            self.calls.append(text)
            return self.answer

    recorder = Recorder()
    monkeypatch.setattr(QMessageBox, "question", recorder)
    return recorder


@pytest.fixture
def installs(monkeypatch):
    """Record what the plugin asks pip to install (nothing is installed)."""
    calls = []
    monkeypatch.setattr(dependencies, "install", lambda requirements: calls.append(requirements) or (True, "ok"))
    return calls


def test_missing_package_is_named_with_the_pip_command(torch_missing):
    message = dependencies.missing_message(dependencies.missing_requirements())
    assert dependencies.missing_requirements() == ["torch"]
    assert "missing from this QGIS: torch." in message
    assert dependencies.format_command(dependencies.pip_command(["torch"])) in message


@pytest.mark.parametrize("executable", ["/opt/qgis/bin/qgis", "/root/.pyenv/shims/python3"])
def test_pip_targets_the_python_qgis_runs(monkeypatch, tmp_path, executable):
    """Not sys.executable: the QGIS binary, or whichever python3 came first on PATH when Python was embedded."""
    monkeypatch.setattr(sys, "executable", executable)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)  # QGIS's Python, not the venv the tests run in
    monkeypatch.setattr(sys, "exec_prefix", str(tmp_path))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / version).touch()
    assert dependencies.pip_command(["torch"])[:4] == [str(tmp_path / "bin" / version), "-m", "pip", "install"]


def test_pip_in_a_virtual_environment_installs_into_it():
    assert sys.prefix != sys.base_prefix  # the suite runs in the repository's .venv
    assert dependencies.pip_command(["torch"]) == [sys.executable, "-m", "pip", "install", "torch"]


@pytest.mark.parametrize("process_geos, requirement", [((3, 11), dependencies.SHAPELY_FOR_OLD_GEOS),
                                                       ((3, 13), dependencies.SHAPELY), (None, dependencies.SHAPELY)])
def test_missing_shapely_is_asked_for_in_a_version_this_qgis_can_run(monkeypatch, process_geos, requirement):
    """The newest shapely bundles a newer GEOS than QGIS 3.22 links (3.11 on Debian 12) and would be refused
    after the install: ask for the 2.0 series straight away, and say it is missing, not that it clashes."""
    monkeypatch.setitem(sys.modules, "shapely", None)
    monkeypatch.setattr(dependencies, "process_geos_version", lambda: process_geos)
    assert dependencies.missing_requirements() == [requirement]
    message = dependencies.missing_message([requirement])
    assert f"missing from this QGIS: {requirement}." in message and "would crash" not in message


def test_shapely_1_is_replaced(monkeypatch):
    """Debian 12's python3-shapely is 1.8: importable, without the 2.0 API the engine uses."""
    import importlib.metadata

    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.8.5" if name == "shapely" else version(name))
    monkeypatch.setattr(dependencies, "process_geos_version", lambda: (3, 11))
    assert dependencies.missing_requirements() == [dependencies.SHAPELY_FOR_OLD_GEOS]
    message = dependencies.missing_message(dependencies.missing_requirements())
    assert f"missing from this QGIS (or too old): {dependencies.SHAPELY_FOR_OLD_GEOS}." in message
    assert "would crash" not in message


def test_missing_pip_is_named(monkeypatch, torch_missing):
    monkeypatch.setitem(sys.modules, "pip", None)
    assert "apt install python3-pip" in dependencies.missing_message(dependencies.missing_requirements())


def test_plugin_loads_asks_once_and_installs_nothing_without_consent(qgis_iface, qgis_processing, torch_missing,
                                                                     question, installs):
    from minec2f_qgis import classFactory

    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert len(question.calls) == 1 and "pip install" in question.calls[0]
        assert installs == []
        assert plugin.provider.algorithm("segment") is not None  # the provider stays registered
    finally:
        plugin.unload()


def test_ignore_stops_the_question_until_other_packages_are_missing(qgis_iface, qgis_processing, torch_missing,
                                                                    question, installs, monkeypatch):
    from qgis.core import Qgis, QgsSettings

    from minec2f_qgis import classFactory
    from minec2f_qgis.plugin import DECLINED_KEY

    QgsSettings().remove(DECLINED_KEY)
    question.answer = QMessageBox.Ignore
    try:
        for start in range(3):  # QGIS starts three times; the third time shapely is missing too
            if start == 2:
                monkeypatch.setitem(sys.modules, "shapely", None)
            qgis_iface.messageBar().clear_messages()
            plugin = classFactory(qgis_iface)
            plugin.initGui()
            plugin.unload()
            warnings = qgis_iface.messageBar().get_messages(Qgis.Warning)
            assert len(question.calls) == (1, 1, 2)[start]
            assert bool(warnings) == (start == 1) and all("pip install" in warning for warning in warnings)
        assert installs == []
    finally:
        QgsSettings().remove(DECLINED_KEY)


def test_consent_runs_pip_for_the_missing_packages(qgis_iface, qgis_processing, torch_missing, question,
                                                   installs):
    from qgis.core import QgsApplication

    from minec2f_qgis import classFactory

    question.answer = QMessageBox.Yes
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        plugin.install_task.waitForFinished(10000)
        QgsApplication.processEvents()
        assert installs == [["torch"]]
    finally:
        plugin.unload()


def test_algorithm_reports_missing_packages(plugin, torch_missing, tmp_path):
    with pytest.raises(QgsProcessingException, match="pip install"):
        processing.run("minec2f:segment", {"INPUT": str(tmp_path / "scene.tif"),
                                           "OUTPUT_PROBABILITY": "TEMPORARY_OUTPUT",
                                           "OUTPUT_MASK": "TEMPORARY_OUTPUT", "OUTPUT_FOOTPRINTS": "TEMPORARY_OUTPUT"})


def test_shapely_with_newer_geos_than_qgis_is_replaced(monkeypatch):
    import shapely

    monkeypatch.setattr(dependencies, "process_geos_version", lambda: (3, 11))
    monkeypatch.setattr(shapely, "geos_version", (3, 13, 1))
    assert dependencies.missing_requirements() == [dependencies.SHAPELY_FOR_OLD_GEOS]
    assert "would crash it" in dependencies.missing_message(dependencies.missing_requirements())
    monkeypatch.setattr(shapely, "geos_version", (3, 11, 4))
    assert dependencies.missing_requirements() == []


def test_python_host_has_no_geos_clash():
    # pytest runs PyQGIS inside Python, which loads QGIS's libraries with local symbols: no clash possible.
    assert dependencies.process_geos_version() is None


def test_dock_says_what_is_missing_and_offers_no_run(plugin, qgis_iface, torch_missing):
    from minec2f_qgis.dock import MineC2FDock

    widget = MineC2FDock(qgis_iface)
    try:
        assert "missing from this QGIS: torch." in widget.status.text() and "pip install" in widget.status.text()
        assert not widget.run_button.isEnabled() and not widget.finetune_button.isEnabled()
        assert not widget.reload_models_button.isEnabled()  # reading the models needs the engine
    finally:
        widget.deleteLater()
