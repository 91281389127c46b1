"""One generation engine for the CLI, the tasks and everything built on them: ids in, ids out."""

from biogpt.generation.compiled import compile_decode
from biogpt.generation.constraints import (
           AllowedSequences,
           Choice,
           Constraint,
           ForcedPrefix,
           Lit,
           SourceSpans,
           Span,
           Template,
)
from biogpt.generation.engine import GenerationOutput, generate, left_pad
from biogpt.generation.scheduler import Delta, QueueFull, SamplingParams, Scheduler

__all__ = ["AllowedSequences", "Choice", "Constraint", "ForcedPrefix", "GenerationOutput", "Lit", "SourceSpans", "Span",
           "Template", "compile_decode", "generate", "left_pad", "Delta", "QueueFull", "SamplingParams",
           "Scheduler"]  # fmt: skip
