"""BioGPT's five benchmark tasks, one module each, sharing the small interface in `common.py`."""

from biogpt.tasks.bc5cdr import BC5CDR
from biogpt.tasks.common import Example, TaskError, inference_prefix, predict, read_predictions, training_pair
from biogpt.tasks.ddi import DDI
from biogpt.tasks.hoc import HoC
from biogpt.tasks.kd_dti import KDDTI
from biogpt.tasks.pubmedqa import PubMedQA

NAMES = ("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc")

# BioGPT-Large has 2,048 positions. Its PubMedQA recipe (examples/QA-PubMedQA/train_large.sh and
# rebuild_data_large.py at commit d091082) differs from the base one: --max-source-positions 1900,
# --max-target-positions 2048, and the source is not lowercased (only the target is).
LARGE_POSITIONS = 2048
LARGE_PUBMEDQA = {"max_source_tokens": 1900, "max_length": 2048, "lowercase": False}


def get_task(name: str, **options):
    """The task object for `name` (options: PubMedQA's setting= and lowercase=)."""
    tasks = {"pubmedqa": PubMedQA, "bc5cdr": BC5CDR, "ddi": DDI, "kd-dti": KDDTI, "hoc": HoC}
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(NAMES)}")
    return tasks[name](**options)


def task_for_model(name: str, config, **options):
    """The task with the settings the model was fine-tuned with, never the base constants by default:

    1. what the checkpoint itself records (fairseq cfg.task max_source_positions / max_target_positions,
       kept in `config.task_settings`);
    2. else, for a Large-shaped model (2,048 positions), the original Large scripts' settings (PubMedQA);
    3. else the base scripts' (the task's class attributes).
    """
    if not hasattr(config, "prompt_tasks"):  # BioMedLM or BiomedGPT: not a BioGPT task model
        raise TaskError(
            f"{name} runs BioGPT task models (prompt tokens, BioGPT's vocabulary); this is a "
            f"{type(config).__name__.removesuffix('Config')} model: use `biogpt eval pubmedqa` / `extract --task "
            "pubmedqa` for BioMedLM, `biogpt eval meqsum|vqa|nli|medmnist|caption` for BiomedGPT"
        )
    large = config.max_positions >= LARGE_POSITIONS
    if name == "pubmedqa" and large and "lowercase" not in options:
        options["lowercase"] = LARGE_PUBMEDQA["lowercase"]
    task = get_task(name, **options)
    if name == "pubmedqa" and large:
        task.max_source_tokens, task.max_length = LARGE_PUBMEDQA["max_source_tokens"], LARGE_PUBMEDQA["max_length"]
    if config.prompt_tasks and name in config.prompt_tasks:  # a multi-task model: this task's prompt tokens
        first, count = config.prompt_tasks[name]
        task.prompt_slice, task.num_prompt_tokens = (int(first), int(count)), int(count)
    recorded = config.task_settings or {}
    if "max_source_positions" in recorded:
        task.max_source_tokens = int(recorded["max_source_positions"])
    if "max_target_positions" in recorded:
        task.max_length = int(recorded["max_target_positions"])
    return task


__all__ = [
    "BC5CDR", "DDI", "KDDTI", "HoC", "PubMedQA", "Example", "TaskError", "NAMES", "get_task", "inference_prefix",
    "predict", "read_predictions", "task_for_model", "training_pair",
]  # fmt: skip
