"""Thin ResNet for speaker verification: K. He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016, with the narrow (base width 32) 2-D variant of the speaker-verification recipes: J. S. Chung et
al., "In defence of metric learning for speaker recognition", Interspeech 2020 (clovaai/voxceleb_trainer),
and H. Wang et al., "Wespeaker: A research and production oriented speaker embedding learning toolkit",
ICASSP 2023 (wenet-e2e/wespeaker, whose ResNet this follows layer for layer).

The fbank is a 1-channel image on the (F, T) plane:
    Conv2d 3x3 + BN + ReLU, width w              (B, w, F, T)
    4 stages of BasicBlocks, widths w, 2w, 4w, 8w, strides 1, 2, 2, 2 (on F and T alike)
                                                  (B, 8w, F/8, T/8)   (F/8 rounded up)
    temporal statistics pooling over T            (B, 2 * 8w * F/8)
    Linear to 256                                 (B, 256)
ResNet34 = [3, 4, 6, 3] blocks, 6.63 M parameters for 80 mels (wespeaker's number); ResNet18 = [2, 2, 2, 2].
The embedding is the linear layer's output, as in wespeaker's default (two_emb_layer=False); its optional
second layer (BN + Linear 256x256) is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.pooling import StatsPooling


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN, ReLU in between and after the residual sum (He et al., figure 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # projection shortcut (He et al., option B)
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C_in, F, T) -> (B, C_out, F/stride, T/stride)
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """fbank (B, T, n_mels) -> embedding (B, embed_dim). Any T >= 1 frame; T >= 50 (0.5 s) is sensible.

    The convolution weights are stored channels_last (NHWC), and every 4-D map follows them: it is oneDNN's
    (and cuDNN's, for bf16/fp16) native layout, where NCHW costs a reorder around each convolution; measured
    on a 2-core AVX-512 CPU, a ResNet34 training step is ~10% faster in fp32 and bf16. Nothing reshapes the
    4-D maps, and the pooling reduces over T before flattening, so no activation is copied back to NCHW.
    Module.to() and load_state_dict keep the layout (an NCHW state_dict loads as it is); the values and the
    outputs are those of the NCHW network, up to float rounding.
    """

    def __init__(self, n_mels: int, blocks: tuple[int, int, int, int], channels: int = 32, embed_dim: int = 256,
                 stats_variance: str = "population"):
        super().__init__()
        self.embed_dim = embed_dim
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        stages = []
        in_channels, freq = channels, n_mels
        for stage, (count, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            width = channels * 2 ** stage
            stages += [BasicBlock(in_channels if i == 0 else width, width, stride if i == 0 else 1)
                       for i in range(count)]
            in_channels, freq = width, -(-freq // stride)  # a stride-2, pad-1 3x3 conv gives ceil(F / 2)
        self.stages = nn.Sequential(*stages)
        self.pool = StatsPooling(unbiased=stats_variance == "unbiased")
        # wespeaker sizes this int(n_mels / 8) * 8w, which is wrong when n_mels is not a multiple of 8.
        self.embed = nn.Linear(2 * in_channels * freq, embed_dim)
        self.to(memory_format=torch.channels_last)  # the 4-D convolution weights only

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, F)
        x = self.stem(x.transpose(1, 2).unsqueeze(1))  # (B, 1, F, T) -> (B, w, F, T)
        x = self.stages(x)  # (B, 8w, F/8, T/8)
        return self.embed(self.pool(x))  # (B, 2 * 8w * F/8) float32 -> (B, D)


# --- named sizes: the MODELS entries (n_mels from the features; None = the recipe's size) ------------------

def resnet18(*, n_mels: int, embed_dim: int | None = None, channels: int | None = None,
             stats_variance: str = "population") -> ResNet:
    """ResNet18, base width 32, 256-d embedding (4.1 M parameters for 80 mels)."""
    return ResNet(n_mels, (2, 2, 2, 2), channels=32 if channels is None else channels,
                  embed_dim=256 if embed_dim is None else embed_dim, stats_variance=stats_variance)


def resnet34(*, n_mels: int, embed_dim: int | None = None, channels: int | None = None,
             stats_variance: str = "population") -> ResNet:
    """ResNet34, base width 32, 256-d embedding (6.63 M parameters for 80 mels)."""
    return ResNet(n_mels, (3, 4, 6, 3), channels=32 if channels is None else channels,
                  embed_dim=256 if embed_dim is None else embed_dim, stats_variance=stats_variance)
