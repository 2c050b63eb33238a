"""MineC2F Processing algorithms, one per module."""

from .evaluate import EvaluateAlgorithm
from .export_chips import ExportChipsAlgorithm
from .finetune_student import FinetuneStudentAlgorithm
from .polygonize import PolygonizeAlgorithm
from .segment import SegmentAlgorithm
from .train_teacher import TrainTeacherAlgorithm

ALGORITHMS = [SegmentAlgorithm, PolygonizeAlgorithm, EvaluateAlgorithm, TrainTeacherAlgorithm, FinetuneStudentAlgorithm,
              ExportChipsAlgorithm]
