"""models/wespeaker.py: a state dict laid out with wespeaker's key names and shapes (generated here, no download)
becomes a checkpoint of this project whose forward equals wespeaker's ResNet forward (written out below from
its layer list), once the pooling takes the unbiased variance; and what it cannot convert is a one-line error."""

import pytest
import torch
import torch.nn.functional as F

from config import build_config
from models import model_from_config
from models.wespeaker import main as convert
from runs import load_trained
from utils import UserError

STRIDES = (1, 2, 2, 2)


def bn_state(prefix: str, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(width, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(width, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(width, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(width, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(100)}


def conv(out_channels: int, in_channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(out_channels, in_channels, size, size, generator=g) * (2 / (in_channels * size * size)) ** 0.5


def wespeaker_resnet(blocks: tuple[int, ...], width: int = 8, n_mels: int = 40, embed_dim: int = 32,
                     classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under wespeaker's ResNet names and shapes (wespeaker/models/resnet.py: conv1, bn1,
    layer1-4 of BasicBlocks with conv1/bn1/conv2/bn2/shortcut, seg_1, and the projection head)."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": conv(width, 1, 3, g), **bn_state("bn1", width, g)}
    in_channels = width
    for layer, (count, stride) in enumerate(zip(blocks, STRIDES), 1):
        out = width * 2 ** (layer - 1)
        for i in range(count):
            p = f"layer{layer}.{i}"
            state |= {f"{p}.conv1.weight": conv(out, in_channels, 3, g), **bn_state(f"{p}.bn1", out, g),
                      f"{p}.conv2.weight": conv(out, out, 3, g), **bn_state(f"{p}.bn2", out, g)}
            if i == 0 and (stride != 1 or in_channels != out):
                state |= {f"{p}.shortcut.0.weight": conv(out, in_channels, 1, g), **bn_state(f"{p}.shortcut.1", out, g)}
            in_channels = out
    stats = 2 * in_channels * (n_mels // 8)
    state |= {"seg_1.weight": torch.randn(embed_dim, stats, generator=g) / stats ** 0.5,
              "seg_1.bias": 0.1 * torch.randn(embed_dim, generator=g),
              "projection.weight": torch.randn(classes, embed_dim, generator=g)}
    return state


def bn(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def wespeaker_forward(s: dict, blocks: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """wespeaker's ResNet forward (two_emb_layer=False) on its own state dict: fbank (B, T, F) -> (B, D)."""
    out = F.relu(bn(F.conv2d(x.permute(0, 2, 1).unsqueeze(1), s["conv1.weight"], padding=1), s, "bn1"))
    for layer, (count, stride) in enumerate(zip(blocks, STRIDES), 1):
        for i in range(count):
            p, step = f"layer{layer}.{i}", stride if i == 0 else 1
            y = F.relu(bn(F.conv2d(out, s[f"{p}.conv1.weight"], stride=step, padding=1), s, f"{p}.bn1"))
            y = bn(F.conv2d(y, s[f"{p}.conv2.weight"], padding=1), s, f"{p}.bn2")
            short = (bn(F.conv2d(out, s[f"{p}.shortcut.0.weight"], stride=step), s, f"{p}.shortcut.1")
                     if f"{p}.shortcut.0.weight" in s else out)
            out = F.relu(y + short)
    mean, std = out.mean(dim=-1), torch.sqrt(torch.var(out, dim=-1) + 1e-7)  # TSTP: unbiased variance
    stats = torch.cat((mean.flatten(start_dim=1), std.flatten(start_dim=1)), dim=1)
    return F.linear(stats, s["seg_1.weight"], s["seg_1.bias"])


@pytest.mark.parametrize("blocks", [(3, 4, 6, 3), (2, 2, 2, 2)], ids=["resnet34", "resnet18"])
def test_a_converted_wespeaker_resnet_gives_wespeakers_outputs(blocks, tmp_path):
    state = wespeaker_resnet(blocks)
    torch.save(state, tmp_path / "avg_model.pt")
    out = convert([str(tmp_path), str(tmp_path / "run/checkpoints/best.pt")])
    trained = load_trained(out)
    assert trained.cfg.model == {(3, 4, 6, 3): "resnet34", (2, 2, 2, 2): "resnet18"}[blocks]
    assert (trained.cfg.channels, trained.cfg.embed_dim, trained.cfg.n_mels) == (8, 32, 40)
    assert trained.cfg.stats_variance == "unbiased" and len(trained.speakers) == 5
    assert torch.equal(trained.head.weight, state["projection.weight"])
    x = torch.randn(3, 120, 40, generator=torch.Generator().manual_seed(1))
    double = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    expected = wespeaker_forward(double, blocks, x.double()).float()  # float64: the reference's own rounding out
    scale = expected.abs().max().item()
    with torch.no_grad():
        error = (trained.model(x) - expected).abs().max().item()
        population = model_from_config(build_config({**vars(trained.cfg), "stats_variance": "population"}))
        population.load_state_dict(trained.model.state_dict())
        population_error = (population(x) - expected).abs().max().item()
    assert error < 1e-6 * scale and population_error > 1e-3 * scale, (error, population_error, scale)


def test_what_does_not_convert_is_a_one_line_error(tmp_path):
    def attempt(state: dict) -> None:
        torch.save(state, tmp_path / "x.pt")
        convert([str(tmp_path / "x.pt"), str(tmp_path / "out.pt")])

    with pytest.raises(UserError, match=r"x.pt: a wespeaker ECAPA-TDNN, which this converter does not know"):
        attempt({"layer1.conv.weight": torch.zeros(1), "layer2.se_res2block.0.conv.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"x.pt: not a wespeaker ResNet checkpoint"):
        attempt({"encoder.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"x.pt: a wespeaker ResNet of \(3, 4, 23, 3\) blocks per layer"):
        attempt(wespeaker_resnet((3, 4, 23, 3)))
    with pytest.raises(UserError, match=r"x.pt: a wespeaker ResNet with a second embedding layer"):
        attempt({**wespeaker_resnet((2, 2, 2, 2)), "seg_2.weight": torch.zeros(1)})
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"x.pt: not a readable checkpoint"):
        convert([str(tmp_path / "x.pt"), str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()
