"""One generation engine for the CLI, the tasks and everything built on them: ids in, ids out."""

from biogpt.generation.constraints import AllowedSequences, Constraint, ForcedPrefix, SourceSpans
from biogpt.generation.engine import GenerationOutput, generate, left_pad

__all__ = ["AllowedSequences", "Constraint", "ForcedPrefix", "GenerationOutput", "SourceSpans", "generate", "left_pad"]
