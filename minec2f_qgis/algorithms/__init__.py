"""MineC2F Processing algorithms, one per module."""

from .export_chips import ExportChipsAlgorithm
from .finetune_student import FinetuneStudentAlgorithm
from .segment import SegmentAlgorithm
from .train_teacher import TrainTeacherAlgorithm

ALGORITHMS = [SegmentAlgorithm, TrainTeacherAlgorithm, FinetuneStudentAlgorithm, ExportChipsAlgorithm]
