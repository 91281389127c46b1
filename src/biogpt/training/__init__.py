"""Training: learning a vocabulary, building a corpus, pre-training from scratch and prompt fine-tuning."""

from biogpt.training.finetune import RECIPES, add_prompt_tokens, finetune
from biogpt.training.loop import TrainConfig, flops_per_token, inverse_sqrt_lr, train
from biogpt.training.loss import lm_loss
from biogpt.training.pretrain import PRESETS, pretrain
from biogpt.training.runs import average_checkpoints

__all__ = ["PRESETS", "RECIPES", "TrainConfig", "add_prompt_tokens", "average_checkpoints", "finetune",
           "flops_per_token", "inverse_sqrt_lr", "lm_loss", "pretrain", "train"]  # fmt: skip
