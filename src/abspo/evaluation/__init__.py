"""Evaluation helpers: answer parsing and reasoning tasks used by the retention callback."""

from abspo.evaluation.answers import extract_answer, is_correct, parse_number, same_number
from abspo.evaluation.tasks import EvalResult, Task, TaskSpec, build_task, evaluate

__all__ = ["EvalResult", "Task", "TaskSpec", "build_task", "evaluate", "extract_answer", "is_correct", "parse_number",
           "same_number"]
