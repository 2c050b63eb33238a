"""MineC2F engine: coarse-to-fine mining footprint segmentation, free of QGIS."""

__version__ = "0.1.0"
