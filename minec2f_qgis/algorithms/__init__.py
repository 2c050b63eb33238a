"""MineC2F Processing algorithms, one per module."""

from .segment import SegmentAlgorithm

ALGORITHMS = [SegmentAlgorithm]
