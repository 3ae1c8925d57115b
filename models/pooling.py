"""Temporal pooling: frame-level features (B, ..., T) to one utterance-level vector (B, D).

- `StatsPooling`: mean and standard deviation over time, as in the x-vector (Snyder et al., ICASSP 2018) and
  the "temporal statistics pooling" of the ResNet recipes (wespeaker TSTP, voxceleb_trainer SAP-less ResNets).

The variance over time of the unweighted statistics (StatsPooling, and AttentiveStatsPooling's global context)
is a model option (config `stats_variance`, one of VARIANCES): "population" divides the squared deviations by T
(this project's default, defined for T = 1) and floors the variance at VARIANCE_FLOOR before the square root;
"unbiased" divides by T - 1 (torch.var's default) and takes sqrt(var + 1e-7): wespeaker's TSTP pooling, term
for term, so that a model converted from wespeaker (models/wespeaker.py) gives its outputs -- the floor
matters as much as the divisor there, wherever a channel is silent over time (var 0: std 3.2e-3 against
wespeaker's 3.2e-4). The divisors differ by a factor T / (T - 1); with T = 1, "unbiased" uses T.
- `AttentiveStatsPooling`: attentive statistics pooling (Okabe et al., Interspeech 2018) with the channel- and
  context-dependent attention of ECAPA-TDNN (Desplanques et al., Interspeech 2020, section 2.3).

The statistics are computed in float32 even under autocast: a variance taken as E[x^2] - E[x]^2 in bfloat16
(8 bits of mantissa) loses most of its digits to cancellation, and the std of a short or constant input would be
0 or negative. The variance is clamped before the square root, so every output stays finite and differentiable.
The attention scores of `AttentiveStatsPooling` (two 1x1 convolutions, nearly all of its FLOPs) follow autocast
like every other convolution; the softmax over them, and everything after it, is float32.

Speed: the unweighted mean and variance over time take two passes (mean, then mean of squared deviations), not
torch.var_mean, whose Welford reduction over the last axis was ~10x slower forward and ~2.5x forward + backward
on a (64, 1536, 200) map (2-core AVX-512 CPU, torch 2.13); the same values up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANCE_FLOOR = 1e-5  # clamp on the variance before sqrt: std >= 3.2e-3, a finite gradient at var = 0
VARIANCES = ("population", "unbiased")  # estimators of the variance over time (module docstring)
UNBIASED_EPSILON = 1e-7  # added to the unbiased variance under the square root, as wespeaker's TSTP does


def floored_std(var: Tensor) -> Tensor:
    """sqrt(var) with the variance floored at VARIANCE_FLOOR (negative rounding errors included)."""
    return var.clamp(min=VARIANCE_FLOOR).sqrt()


def unweighted_std(var: Tensor, unbiased: bool) -> Tensor:
    """The std of the unweighted statistics from mean_and_variance's `var`: floored (population) or
    sqrt(var + UNBIASED_EPSILON) (unbiased, wespeaker's); var >= 0 there (a mean of squares)."""
    return (var + UNBIASED_EPSILON).sqrt() if unbiased else floored_std(var)


def mean_and_variance(x: Tensor, keepdim: bool = False, unbiased: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and variance over the last axis, in x's dtype: population (correction=0) or, with `unbiased`,
    correction=1 when T > 1 -- torch.var_mean's values (up to rounding) in two passes, mean then mean squared
    deviation: as stable, and several times faster on the CPU than var_mean's Welford reduction."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).square().mean(dim=-1, keepdim=keepdim)
    frames = x.shape[-1]
    if unbiased and frames > 1:
        var = var * (frames / (frames - 1))
    return (mean if keepdim else mean.squeeze(-1)), var


class StatsPooling(nn.Module):
    """Mean and standard deviation over the last axis (time), every other axis flattened into features.

    (B, C, T) -> (B, 2C); (B, C, F, T) -> (B, 2CF), ordered [mean over (C, F) row-major, std likewise], the
    same order as wespeaker's TSTP. Reducing over the last axis of the 4-D map (instead of first reshaping it
    to (B, CF, T)) keeps a channels_last input from being copied: only the small (B, C, F) results are.
    `unbiased`: the variance estimator (module docstring).
    """

    def __init__(self, unbiased: bool = False):
        super().__init__()
        self.unbiased = unbiased

    def forward(self, x: Tensor) -> Tensor:  # x: (B, ..., T)
        with torch.autocast(x.device.type, enabled=False):
            mean, var = mean_and_variance(x.float(), unbiased=self.unbiased)  # (B, ...) each
            return torch.cat((mean.flatten(1), unweighted_std(var, self.unbiased).flatten(1)), dim=1)  # (B, 2 * prod)


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over time, one attention distribution per channel.

    For frames h_t (C channels), with global_context the attention also sees the utterance's unweighted mean
    and std (ECAPA-TDNN eq. 7-9):
        e_t = V f(W [h_t; mean(h); std(h)] + b) + k        (C scores per frame)
        a_t = softmax over t of e_t                         (per channel)
        mu = sum_t a_t h_t,   sigma = sqrt(sum_t a_t h_t^2 - mu^2)
    f is ReLU -> BatchNorm -> tanh, as in the reference implementations (TaoRuijie/ECAPA-TDNN, SpeechBrain);
    the paper only says "a non-linearity". Output (B, 2C) = [mu; sigma], float32.

    Precision: mean(h), std(h), the softmax, mu and sigma are float32. The scores e_t (W and V: 2 C A MACs
    per frame, nearly all of the pooling's compute) run in the autocast dtype when autocast is on, like every
    other convolution: a bf16 score is off by ~0.4% of its value, which moves its attention weight by about
    as much, and the pooling's forward + backward under bf16 autocast takes ~0.6-0.75x the time it took with
    W and V in float32 (batch 64 x 200 frames, C = 1536; measured on a 2-core AVX-512 CPU).
    """

    def __init__(self, channels: int, attention_channels: int = 128, global_context: bool = True,
                 unbiased: bool = False):
        super().__init__()
        self.channels = channels
        self.global_context = global_context
        self.unbiased = unbiased  # the global context's variance estimator (module docstring)
        context = 3 * channels if global_context else channels
        self.attention_in = nn.Conv1d(context, attention_channels, kernel_size=1)  # W, b
        self.attention_norm = nn.BatchNorm1d(attention_channels)
        self.attention_out = nn.Conv1d(attention_channels, channels, kernel_size=1)  # V, k

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, T), float32 or the autocast dtype
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()  # (B, C, T); x itself when x is float32
        hidden = self._attention_input(x, x32)  # (B, A, T): W [h_t; mean; std] + b
        hidden = torch.tanh(self.attention_norm(F.relu(hidden)))
        scores = self.attention_out(hidden)  # (B, C, T), in the autocast dtype
        with torch.autocast(x.device.type, enabled=False):
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32)  # (B, C, T), sums to 1 over T
            weighted = weights * x32  # (B, C, T): a_t h_t
            mean = weighted.sum(dim=-1)  # (B, C)
            var = (weighted * x32).sum(dim=-1) - mean.square()  # (B, C)
            return torch.cat((mean, floored_std(var)), dim=1)  # (B, 2C)

    def _attention_input(self, x: Tensor, x32: Tensor) -> Tensor:  # x: (B, C, T) -> (B, A, T)
        if not self.global_context:
            return self.attention_in(x)
        # W [h_t; mean; std] = W_h h_t + (W_mean mean + W_std std): the context terms are the same for every
        # frame, so they are computed once per utterance and broadcast over T, instead of concatenating a
        # (B, 3C, T) tensor. Same weights (a Conv1d(3C, A), state_dict-compatible), a third of the FLOPs.
        with torch.autocast(x.device.type, enabled=False):
            mean, var = mean_and_variance(x32, keepdim=True, unbiased=self.unbiased)  # (B, C, 1) each, float32
        w_frame, w_mean, w_std = self.attention_in.weight.split(self.channels, dim=1)  # (A, C, 1) each
        std = unweighted_std(var, self.unbiased)  # (B, C, 1)
        context = F.conv1d(mean, w_mean, self.attention_in.bias) + F.conv1d(std, w_std)  # (B, A, 1)
        return F.conv1d(x, w_frame) + context  # (B, A, T)
