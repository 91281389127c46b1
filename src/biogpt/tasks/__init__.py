"""BioGPT's five benchmark tasks, one module each, sharing the small interface in `common.py`."""

from biogpt.tasks.bc5cdr import BC5CDR
from biogpt.tasks.common import Example, TaskError, inference_prefix, predict, read_predictions, training_pair
from biogpt.tasks.ddi import DDI
from biogpt.tasks.hoc import HoC
from biogpt.tasks.kd_dti import KDDTI
from biogpt.tasks.pubmedqa import PubMedQA

NAMES = ("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc")


def get_task(name: str, **options):
    """The task object for `name` (options: PubMedQA's setting= and lowercase=)."""
    tasks = {"pubmedqa": PubMedQA, "bc5cdr": BC5CDR, "ddi": DDI, "kd-dti": KDDTI, "hoc": HoC}
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(NAMES)}")
    return tasks[name](**options)


__all__ = [
    "BC5CDR", "DDI", "KDDTI", "HoC", "PubMedQA", "Example", "TaskError", "NAMES", "get_task", "inference_prefix",
    "predict", "read_predictions", "training_pair",
]  # fmt: skip
