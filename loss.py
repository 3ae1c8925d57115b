"""Classification heads that train speaker embeddings, and the margin schedule.

A head owns its class weights (num_speakers x embed_dim) and its margin. Its forward maps
(embeddings (B, D), labels (B,), margin) to (mean cross-entropy loss, logits (B, num_speakers)); `margin`
None = the head's own, a number = this step's (the trainer's margin schedule passes it); `reduction="none"`
returns each sample's loss (B,) instead of their mean (train.py's in-training filtering records them); the
returned logits carry no margin, so their argmax is the nearest class and the trainer's accuracy does not
depend on the margin: softmax returns W e + b, the cosine heads return s * cos(theta_j) (scaled, margin-free).
Heads compute in float32 even under autocast: a bf16 cosine has 2-3 significant digits, about the size of
a margin's effect on it.

    softmax        plain linear classifier + cross-entropy (Snyder et al. 2018)
    am             AM-softmax / CosFace (Wang et al., IEEE SPL 2018; Wang et al., CVPR 2018)
    aam            AAM-softmax / ArcFace (Deng et al., CVPR 2019)
    subcenter_aam  sub-center ArcFace (Deng et al., ECCV 2020)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # config imports this module's registry to validate `loss`
    from config import Config


class SoftmaxHead(nn.Module):
    """logits = W e + b; loss = CE(logits, y). No normalisation and no margin: `margin` and `scale` do not
    apply (forward takes a margin like every head, and has none to apply)."""

    def __init__(self, embed_dim: int, num_speakers: int):
        super().__init__()
        self.classifier = nn.Linear(embed_dim, num_speakers)

    def forward(self, embeddings: Tensor, labels: Tensor, margin: float | None = None,
                reduction: str = "mean") -> tuple[Tensor, Tensor]:  # (B, D), (B,)
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.classifier(embeddings.float())  # (B, S)
            return F.cross_entropy(logits, labels, reduction=reduction), logits  # () or, "none", (B,)

    def class_centers(self) -> Tensor:
        """(S, D): the L2-normalised weight rows (the bias is left out)."""
        return F.normalize(self.classifier.weight, dim=1)


class CosineHead(nn.Module):
    """The cosine classifier shared by the margin heads. With unit vectors e/|e| and w_j/|w_j|,
    cos(theta_j) = <e, w_j> / (|e| |w_j|), and

        loss = -log( exp(s * psi(cos theta_y)) / (exp(s * psi(cos theta_y)) + sum_{j != y} exp(s * cos theta_j)) )

    where y is the label and psi, the target's margin function, is the subclass's `target_cosine`.
    `margin` (m) is the head's own; a step may pass another (the margin schedule); `scale` is s.
    """

    def __init__(self, embed_dim: int, num_speakers: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_speakers, embed_dim))  # (S, D), one row per class
        nn.init.xavier_normal_(self.weight)  # as in voxceleb_trainer and wespeaker
        self.margin = float(margin)
        self.scale = float(scale)

    def target_cosine(self, cosine: Tensor, margin: float) -> Tensor:
        """psi(cos theta_y): the target's cosine with the margin applied (any shape)."""
        raise NotImplementedError

    def cosine(self, embeddings: Tensor) -> Tensor:  # (B, D) -> (B, S)
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: Tensor, labels: Tensor, margin: float | None = None,
                reduction: str = "mean") -> tuple[Tensor, Tensor]:  # (B, D), (B,)
        margin = self.margin if margin is None else margin
        with torch.autocast(embeddings.device.type, enabled=False):
            cosine = self.cosine(embeddings.float())  # (B, S)
            index = labels.unsqueeze(1)  # (B, 1)
            target = self.target_cosine(cosine.gather(1, index), margin)  # (B, 1): psi(cos theta_y), computed for
            # the B targets only, then written over them (one out-of-place scatter, no one-hot matrix)
            logits = self.scale * cosine  # (B, S), margin-free
            loss = F.cross_entropy(logits.scatter(1, index, self.scale * target), labels, reduction=reduction)
            return loss, logits  # loss () or, reduction "none", (B,)

    def class_centers(self) -> Tensor:
        """(S, D): the L2-normalised class weights."""
        return F.normalize(self.weight, dim=1)


class AMSoftmaxHead(CosineHead):
    """AM-softmax (additive cosine margin): target logit s * (cos theta_y - m)."""

    def target_cosine(self, cosine: Tensor, margin: float) -> Tensor:
        return cosine - margin


class AAMSoftmaxHead(CosineHead):
    """AAM-softmax (additive angular margin): target logit s * cos(theta_y + m), where
    cos(theta + m) = cos theta cos m - sin theta sin m.

    cos(theta + m) stops decreasing once theta + m > pi, so beyond theta > pi - m (cos theta < cos(pi - m))
    the target gets ArcFace's linear fallback cos theta - m sin m (insightface's `cos theta - mm` with
    mm = sin(pi - m) m), which keeps the penalty monotonic. With easy_margin the margin applies only where
    cos theta > 0, and the target is cos theta elsewhere.
    """

    def __init__(self, embed_dim: int, num_speakers: int, margin: float, scale: float, easy_margin: bool = False):
        super().__init__(embed_dim, num_speakers, margin, scale)
        self.easy_margin = easy_margin

    def target_cosine(self, cosine: Tensor, margin: float) -> Tensor:
        m = margin
        # sin theta >= 0 for theta in [0, pi]; the floor keeps sqrt's gradient finite at cos theta = +-1
        # (torch.where would otherwise multiply an infinite gradient by 0 and return NaN).
        sine = (1.0 - cosine.square()).clamp(min=1e-7).sqrt()
        shifted = cosine * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
        if self.easy_margin:
            return torch.where(cosine > 0, shifted, cosine)
        return torch.where(cosine > math.cos(math.pi - m), shifted, cosine - math.sin(math.pi - m) * m)


class SubcenterAAMHead(AAMSoftmaxHead):
    """Sub-center AAM-softmax: K sub-centres per speaker, cos theta_j = max over k of cos(e, w_jk); then AAM.
    Noisy utterances gather on non-dominant sub-centres instead of pulling the dominant one.
    With K = 1 it is AAMSoftmaxHead exactly (same weight layout)."""

    def __init__(self, embed_dim: int, num_speakers: int, margin: float, scale: float, subcenters: int,
                 easy_margin: bool = False):
        # weight: (S * K, D), speaker-major: rows j*K .. j*K + K-1 are speaker j's sub-centres
        super().__init__(embed_dim, num_speakers * subcenters, margin, scale, easy_margin)
        self.subcenters = subcenters

    def cosine(self, embeddings: Tensor) -> Tensor:  # (B, D) -> (B, S)
        cosine = super().cosine(embeddings)  # (B, S * K)
        return cosine.unflatten(1, (-1, self.subcenters)).amax(dim=2)  # (B, S, K) -> (B, S)

    def subcenter_weights(self) -> Tensor:
        """(S, K, D): each speaker's K sub-centres, L2-normalised (train_sort's dominant sub-centres)."""
        return F.normalize(self.weight, dim=1).unflatten(0, (-1, self.subcenters))

    def class_centers(self) -> Tensor:
        """(S, D): the normalised mean of each speaker's normalised sub-centres. (The paper's dominant
        sub-centre is the one most training utterances are nearest to; the head keeps no such counts.)"""
        centers = F.normalize(self.weight, dim=1).unflatten(0, (-1, self.subcenters)).mean(dim=1)  # (S, D)
        return F.normalize(centers, dim=1)


# --- registry -------------------------------------------------------------------------------------------
# Each entry takes (embed_dim, num_speakers, margin, scale, subcenters, easy_margin) and passes on what its
# head uses.

def _softmax(embed_dim: int, num_speakers: int, margin: float, scale: float, subcenters: int,
             easy_margin: bool) -> nn.Module:
    return SoftmaxHead(embed_dim, num_speakers)  # margin, scale, subcenters, easy_margin: not used


def _am(embed_dim: int, num_speakers: int, margin: float, scale: float, subcenters: int,
        easy_margin: bool) -> nn.Module:
    return AMSoftmaxHead(embed_dim, num_speakers, margin, scale)  # subcenters, easy_margin: not used


def _aam(embed_dim: int, num_speakers: int, margin: float, scale: float, subcenters: int,
         easy_margin: bool) -> nn.Module:
    return AAMSoftmaxHead(embed_dim, num_speakers, margin, scale, easy_margin)  # subcenters: not used


def _subcenter_aam(embed_dim: int, num_speakers: int, margin: float, scale: float, subcenters: int,
                   easy_margin: bool) -> nn.Module:
    return SubcenterAAMHead(embed_dim, num_speakers, margin, scale, subcenters, easy_margin)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "softmax": _softmax,
    "am": _am,
    "aam": _aam,
    "subcenter_aam": _subcenter_aam,
}


def build_head(name: str, *, embed_dim: int, num_speakers: int, margin: float, scale: float,
               subcenters: int = 3, easy_margin: bool = False) -> nn.Module:
    """The head registered as `name`, with `num_speakers` classes of `embed_dim`-d embeddings."""
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose one of: {', '.join(HEADS)}")
    return HEADS[name](embed_dim, num_speakers, margin, scale, subcenters, easy_margin)


def head_from_config(cfg: Config, embed_dim: int, num_speakers: int) -> nn.Module:
    """The head a config describes, over `num_speakers` classes of the model's `embed_dim`."""
    return build_head(cfg.loss, embed_dim=embed_dim, num_speakers=num_speakers, margin=cfg.margin, scale=cfg.scale,
                      subcenters=cfg.subcenters, easy_margin=cfg.easy_margin)


# --- margin schedule ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MarginSchedule:
    """The margin as a pure function of the (fractional) epoch: 0 before `start_epoch`, a linear ramp to
    `final` between `start_epoch` and `end_epoch`, `final` from `end_epoch` on. Being pure, it needs no
    state in a checkpoint: resuming at epoch e gives the same margin."""

    final: float
    start_epoch: float
    end_epoch: float

    def __post_init__(self) -> None:
        if not 0 <= self.start_epoch <= self.end_epoch:
            raise ValueError(f"margin ramp needs 0 <= start_epoch <= end_epoch, got {self.start_epoch}, "
                             f"{self.end_epoch}")

    def __call__(self, epoch: float) -> float:
        if epoch < self.start_epoch:
            return 0.0
        if epoch >= self.end_epoch:
            return self.final
        return self.final * (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
