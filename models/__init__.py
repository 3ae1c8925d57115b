"""Speaker-embedding networks by name. Every model maps fbank (B, T, n_mels) to an embedding (B, embed_dim)
and has an `embed_dim` attribute; none extracts features, computes a loss or picks a device."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from models.ecapa_tdnn import ecapa_tdnn, ecapa_tdnn_c1024
from models.resnet import resnet18, resnet34

if TYPE_CHECKING:  # config imports this registry to validate `model`
    from config import Config

# Each entry takes (*, n_mels, embed_dim, channels, stats_variance); None = the architecture's standard size
# (embed_dim 192 ECAPA / 256 ResNet; channels = ECAPA's C or the ResNet base width); stats_variance: one of
# pooling.VARIANCES.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "ecapa_tdnn": ecapa_tdnn,  # C=512, 6.2 M parameters
    "ecapa_tdnn_c1024": ecapa_tdnn_c1024,  # C=1024, 14.7 M
    "resnet18": resnet18,  # base width 32, 4.1 M
    "resnet34": resnet34,  # base width 32, 6.6 M
}


def build_model(name: str, *, n_mels: int, embed_dim: int | None = None, channels: int | None = None,
                stats_variance: str = "population") -> nn.Module:
    """The network registered as `name`; embed_dim / channels None = that architecture's standard."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name](n_mels=n_mels, embed_dim=embed_dim, channels=channels, stats_variance=stats_variance)


def model_from_config(cfg: Config) -> nn.Module:
    """The network a config describes (0 for channels or embed_dim = the architecture's standard)."""
    return build_model(cfg.model, n_mels=cfg.n_mels, embed_dim=cfg.embed_dim or None, channels=cfg.channels or None,
                       stats_variance=cfg.stats_variance)
