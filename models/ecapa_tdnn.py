"""ECAPA-TDNN: B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention,
Propagation and Aggregation in TDNN Based Speaker Verification", Interspeech 2020 (arXiv:2005.07143).

Layout (paper, figure 2), for C channels and T frames:
    Conv1d k=5 + ReLU + BN                      (B, C, T)
    3 x SE-Res2Block, k=3, dilation 2, 3, 4     (B, C, T) each; Res2 scale 8, SE bottleneck 128
    MFA: concatenate the 3 block outputs, Conv1d k=1 + ReLU to 1536 channels     (B, 1536, T)
    attentive statistics pooling with global context (attention bottleneck 128)  (B, 3072)
    BN, FC to 192, BN                           (B, 192)
Parameters: 6.19 M for C=512 and 14.66 M for C=1024 (paper: 6.2 M and 14.7 M).

Sources checked against: TaoRuijie/ECAPA-TDNN (same layout, the attention bottleneck there is 256) and
wenet-e2e/wespeaker (whose MFA width is 3C, not the paper's 1536). Every Conv -> ReLU -> BN is in that order,
as in the paper and both sources.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.pooling import AttentiveStatsPooling


class ConvReluBn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d, the paper's frame layer; time length kept ('same' padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size // 2))
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C_in, T) -> (B, C_out, T)
        return self.norm(F.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical convolution (Gao et al., TPAMI 2019) in 1-D.

    The channels are split into `scale` groups x_1..x_s of width C/s; y_1 = K_1(x_1), y_i = K_i(x_i + y_{i-1})
    for 1 < i < s, and the last group passes through unchanged: y_s = x_s. Each K_i is a dilated ConvReluBn.
    The groups are views (torch.split), and the output is assembled by one torch.cat.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by the Res2 scale ({scale})")
        self.width = channels // scale
        self.convs = nn.ModuleList(ConvReluBn(self.width, self.width, kernel_size, dilation)
                                   for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, T)
        groups = torch.split(x, self.width, dim=1)  # scale views of (B, C/scale, T), no copy
        outputs = []
        y = None
        for conv, group in zip(self.convs, groups):
            y = conv(group if y is None else group + y)  # (B, C/scale, T)
            outputs.append(y)
        outputs.append(groups[-1])  # the last group passes through
        return torch.cat(outputs, dim=1)  # (B, C, T)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation over time (Hu et al., CVPR 2018; ECAPA eq. 1-3): channel gates from the
    utterance mean, sigmoid(W2 relu(W1 mean_t(x))), multiplied onto every frame."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.squeeze = nn.Linear(channels, bottleneck)
        self.excite = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, T)
        gates = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=-1)))))  # (B, C)
        return x * gates.unsqueeze(-1)  # (B, C, T)


class SERes2Block(nn.Module):
    """1x1 ConvReluBn -> Res2 dilated conv -> 1x1 ConvReluBn -> SE, plus the residual input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_bottleneck: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvReluBn(channels, channels, kernel_size=1),
            Res2Conv(channels, kernel_size, dilation, scale),
            ConvReluBn(channels, channels, kernel_size=1),
            SqueezeExcitation(channels, se_bottleneck),
        )

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, T) -> (B, C, T)
        return x + self.body(x)


class EcapaTdnn(nn.Module):
    """fbank (B, T, n_mels) -> embedding (B, embed_dim). Any T >= 1 frame; T >= 50 (0.5 s) is sensible."""

    def __init__(self, n_mels: int, channels: int = 512, embed_dim: int = 192, mfa_channels: int = 1536,
                 res2_scale: int = 8, se_bottleneck: int = 128, attention_channels: int = 128,
                 stats_variance: str = "population"):
        super().__init__()
        self.embed_dim = embed_dim
        self.stem = ConvReluBn(n_mels, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, 3, dilation, res2_scale, se_bottleneck)
                                    for dilation in (2, 3, 4))
        # Multi-layer feature aggregation: 1536 channels whatever C, as in the paper's figure 2 (wespeaker
        # uses 3C, which gives 20.8 M parameters at C=1024 instead of the paper's 14.7 M).
        self.aggregate = nn.Conv1d(3 * channels, mfa_channels, kernel_size=1)
        self.pool = AttentiveStatsPooling(mfa_channels, attention_channels, global_context=True,
                                          unbiased=stats_variance == "unbiased")
        self.pool_norm = nn.BatchNorm1d(2 * mfa_channels)
        self.embed = nn.Linear(2 * mfa_channels, embed_dim)
        self.embed_norm = nn.BatchNorm1d(embed_dim)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, F)
        x = self.stem(x.transpose(1, 2))  # (B, C, T)
        # Residual summation (paper section 2.4): each block's input is the sum of the stem's and all earlier
        # blocks' outputs, as in TaoRuijie/ECAPA-TDNN (wespeaker chains the blocks plainly instead).
        outputs = []
        total = x
        for block in self.blocks:
            y = block(total)  # (B, C, T)
            outputs.append(y)
            total = total + y
        x = F.relu(self.aggregate(torch.cat(outputs, dim=1)))  # (B, 3C, T) -> (B, 1536, T)
        x = self.pool_norm(self.pool(x))  # (B, 3072): attentive mean and std, float32
        return self.embed_norm(self.embed(x))  # (B, D)


# --- named sizes: the MODELS entries (n_mels from the features; None = the paper's size) -------------------

def ecapa_tdnn(*, n_mels: int, embed_dim: int | None = None, channels: int | None = None,
               stats_variance: str = "population") -> EcapaTdnn:
    """The paper's small model: C=512, 192-d embedding, 6.2 M parameters."""
    return EcapaTdnn(n_mels, channels=512 if channels is None else channels,
                     embed_dim=192 if embed_dim is None else embed_dim, stats_variance=stats_variance)


def ecapa_tdnn_c1024(*, n_mels: int, embed_dim: int | None = None, channels: int | None = None,
                     stats_variance: str = "population") -> EcapaTdnn:
    """The paper's large model: C=1024, 192-d embedding, 14.7 M parameters."""
    return EcapaTdnn(n_mels, channels=1024 if channels is None else channels,
                     embed_dim=192 if embed_dim is None else embed_dim, stats_variance=stats_variance)
