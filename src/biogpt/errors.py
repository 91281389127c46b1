"""The errors biogpt raises for bad input. Each message names the problem and what to do about it.

They all derive from `BioGPTError` (a ValueError), so the command line prints any of them as one
`error: ...` line with exit code 2, and a program can catch them together.
"""


class BioGPTError(ValueError):
    """Bad input to biogpt: a file, a checkpoint, an option or a request it cannot use as given."""


class VocabError(BioGPTError):
    """A vocabulary file is missing, malformed, or does not belong with its merges."""


class CheckpointError(BioGPTError):
    """A checkpoint is missing, truncated, or does not fit its config or vocabulary."""


class TaskError(BioGPTError):
    """Bad task input: missing split file, wrong number of predictions, mismatched model, unknown task."""


class QuantizationError(BioGPTError):
    """An inference form cannot be made: int8 off the CPU or without a quantized engine, or a model that is
    already in one of these forms."""


class CorpusError(BioGPTError):
    """A corpus cannot be built or read: no documents, a vocabulary that does not fit, a damaged manifest."""


class TrainingError(BioGPTError):
    """Training cannot start or resume as asked: bad settings, or a run directory made with other settings."""


class GenerationError(BioGPTError):
    """A generation request the model cannot serve: no room left for new tokens, bad decoding settings."""


class GenerationCancelled(GenerationError):
    """A search stopped between two steps because its `should_stop()` said so (a client that went away)."""


class InputError(BioGPTError):
    """An input file that cannot be read at all, or is in no known format (a bad record is a counted skip)."""
