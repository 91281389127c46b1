"""The image stem of OFA/BiomedGPT: a ResNet's stem and its first three bottleneck stages (stride 16).

Image [B, 3, S, S] -> conv 7x7/2 -> BN -> ReLU -> maxpool 3x3/2 -> layer1 (256 ch) -> layer2 /2 (512 ch) ->
layer3 /2 (1024 ch) -> patch features [B, 1024, S/16, S/16]. The fourth stage and the classifier of a torchvision
ResNet are absent. Batch norm always uses its running statistics: BiomedGPT's checkpoints hold frozen or
evaluated BN, and inference never updates them (fine-tuning keeps the stem's statistics fixed too).
Parameter names follow the original (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# bottleneck blocks in stages 1-3 by OFA's resnet_type ("resnet18" is OFA's name for 2+2+2 bottlenecks)
RESNET_LAYERS = {"resnet18": (2, 2, 2), "resnet50": (3, 4, 6), "resnet101": (3, 4, 23), "resnet152": (3, 8, 36)}
OUT_CHANNELS = 1024  # layer3's width (256 planes x expansion 4)


class FrozenBatchNorm(nn.Module):
    """Batch norm over channels with fixed statistics: y = (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 x4 channels, each with BN; ReLU after the first two and after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), FrozenBatchNorm(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetStem(nn.Module):
    """[B, 3, S, S] -> [B, 1024, S/16, S/16]."""

    def __init__(self, layers: tuple[int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, 64, layers[0], 1)
        self.layer2 = self._stage(256, 128, layers[1], 2)
        self.layer3 = self._stage(512, 256, layers[2], 2)

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            Bottleneck(inplanes, planes, stride), *(Bottleneck(planes * 4, planes) for _ in range(blocks - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
