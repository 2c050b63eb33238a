"""Waiting for the dock's background task in tests (a module of its own, like known_scene)."""

import time

from qgis.core import QgsApplication


def wait_for_task(dock, timeout=60):
    """Process Qt events until the dock's QgsTask has finished; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while dock.task is not None:
        assert time.monotonic() < deadline, f"the dock's task did not finish within {timeout} s"
        QgsApplication.processEvents()
        time.sleep(0.01)
