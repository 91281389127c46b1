"""Checkpoint formats: reading without running code (io), one explicit key map per family, writing."""

from biogpt.checkpoints.biogpt import BioGPTState, config_from_hf, config_to_hf, hf_to_ours, load_state, ours_to_hf
from biogpt.checkpoints.convert import save_hf
from biogpt.errors import CheckpointError

__all__ = ["BioGPTState", "CheckpointError", "config_from_hf", "config_to_hf", "hf_to_ours", "load_state",
           "ours_to_hf", "save_hf"]  # fmt: skip
