"""The plugin object QGIS loads: Processing provider, toolbar action "Segment mining footprints", the dock, and
the check for missing engine packages."""

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsSettings, QgsTask
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from . import dependencies, unload_engine
from .provider import MineC2FProvider
from .resources import ICON_PATH

TITLE = "MineC2F"
ACTION_TEXT = "Segment mining footprints"
DECLINED_KEY = "MineC2F/declined_requirements"  # the missing packages the user chose not to be asked about again


class MineC2FPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.dock = None
        self.install_task = None

    def initProcessing(self):  # noqa: N802 (QGIS API)
        self.provider = MineC2FProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API)
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON_PATH)), ACTION_TEXT, self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.show_dock)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(TITLE, self.action)
        self.check_dependencies()

    def unload(self):
        if self.dock is not None:
            self.dock.stop()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginMenu(TITLE, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        unload_engine()

    def show_dock(self, visible=True):
        if self.dock is None:
            from .dock import MineC2FDock

            self.dock = MineC2FDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self.action.setChecked)
        elif visible and not self.dock.isVisible():
            self.dock.use_active_layer()
        self.dock.setVisible(visible)

    def check_dependencies(self):
        """If engine packages are missing, say which and how to install them, and offer to run pip (only on
        the user's yes). Returns the missing requirements."""
        missing = dependencies.missing_requirements()
        if not missing:
            return missing
        message = dependencies.missing_message(missing)
        QgsMessageLog.logMessage(message, TITLE)
        settings, declined = QgsSettings(), ",".join(missing)
        if settings.value(DECLINED_KEY, "") == declined:  # "Ignore" last time, and the same packages are missing
            self.iface.messageBar().pushMessage(TITLE, message, Qgis.Warning)
            return missing
        answer = QMessageBox.question(
            self.iface.mainWindow(), f"{TITLE}: packages missing",
            f"{message}\n\nRun this command now? It downloads the packages (PyTorch is large) with pip. "
            "Ignore: do not ask again while the same packages are missing.",
            QMessageBox.Yes | QMessageBox.No | QMessageBox.Ignore, QMessageBox.No)
        settings.setValue(DECLINED_KEY, declined if answer == QMessageBox.Ignore else "")
        if answer == QMessageBox.Yes:
            self.install(missing)
        return missing

    def install(self, requirements):
        """Run pip in a background task and report the outcome in the message bar."""
        def done(exception, result=None):
            success, output = result if result else (False, str(exception))
            if success:
                self.iface.messageBar().pushSuccess(TITLE, "packages installed; restart QGIS to use MineC2F")
            else:
                QgsMessageLog.logMessage(output, TITLE)
                self.iface.messageBar().pushCritical(TITLE, f"pip failed (see the MineC2F log): {output[-200:]}")

        self.install_task = QgsTask.fromFunction(f"{TITLE}: installing {', '.join(requirements)}",
                                                 lambda task: dependencies.install(requirements), on_finished=done)
        QgsApplication.taskManager().addTask(self.install_task)
