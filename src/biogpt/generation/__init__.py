"""One generation engine for the CLI, the tasks and everything built on them: ids in, ids out."""

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

__all__ = ["AllowedSequences", "Choice", "Constraint", "ForcedPrefix", "GenerationOutput", "Lit", "SourceSpans", "Span",
           "Template", "generate", "left_pad"]  # fmt: skip
