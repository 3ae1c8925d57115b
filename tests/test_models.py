"""The model contract (fbank (B, T, F) in, (B, embed_dim) out), the paper sizes, and the pooling layers."""

import pytest
import torch
import torch.nn.functional as F

from models import MODELS, build_model
from models.pooling import AttentiveStatsPooling, StatsPooling
from models.resnet import ResNet


@pytest.fixture(scope="module", params=list(MODELS))
def named_model(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param, n_mels=80)


def test_every_model_maps_a_batch_to_embeddings(named_model):
    name, model = named_model
    model.train()
    out = model(torch.randn(2, 200, 80))
    assert out.shape == (2, model.embed_dim), name
    assert torch.isfinite(out).all(), name


def test_every_model_embeds_half_a_second(named_model):
    name, model = named_model
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 50, 80))
    assert out.shape == (1, model.embed_dim) and torch.isfinite(out).all(), name


def test_standard_embedding_sizes():
    assert build_model("ecapa_tdnn", n_mels=80).embed_dim == 192
    assert build_model("resnet18", n_mels=80).embed_dim == 256


@pytest.mark.parametrize("name, paper_millions", [("ecapa_tdnn", 6.2), ("ecapa_tdnn_c1024", 14.7),
                                                  ("resnet34", 6.63)])
def test_parameter_counts_match_the_papers(name, paper_millions):
    count = sum(p.numel() for p in build_model(name, n_mels=80).parameters())
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.02, f"{name}: {count / 1e6:.3f} M"


def test_sizes_can_be_changed():
    model = build_model("ecapa_tdnn", n_mels=40, embed_dim=64, channels=64)
    assert model(torch.randn(2, 30, 40)).shape == (2, 64)
    model = build_model("resnet18", n_mels=20, embed_dim=32, channels=4)  # 20 mels: F/8 rounds up to 3
    assert model(torch.randn(2, 30, 20)).shape == (2, 32)


def test_unknown_model_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet50'; choose one of: ecapa_tdnn, .*resnet34"):
        build_model("resnet50", n_mels=80)


def test_resnet_gives_the_same_embedding_in_channels_last():
    torch.manual_seed(0)
    model = ResNet(16, (1, 1, 1, 1), channels=8, embed_dim=16).eval()
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --- pooling --------------------------------------------------------------------------------------------

def test_stats_pooling_is_mean_and_std_over_time_of_flattened_features():
    x = torch.randn(2, 3, 4, 10)  # (B, C, F, T)
    flat = x.reshape(2, 12, 10)
    expected = torch.cat((flat.mean(-1), flat.var(-1, correction=0).sqrt()), dim=1)
    torch.testing.assert_close(StatsPooling()(x), expected)


def test_attentive_pooling_global_context_equals_the_concatenated_form():
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(6, attention_channels=4).eval()
    x = torch.randn(2, 6, 15)
    # reference: the paper's literal form, attention over [h_t; mean; std] concatenated per frame
    mean = x.mean(-1, keepdim=True).expand_as(x)
    std = x.var(-1, correction=0, keepdim=True).sqrt().expand_as(x)
    hidden = torch.tanh(pool.attention_norm(F.relu(pool.attention_in(torch.cat((x, mean, std), dim=1)))))
    weights = torch.softmax(pool.attention_out(hidden), dim=-1)
    mu = (weights * x).sum(-1)
    sigma = ((weights * x * x).sum(-1) - mu * mu).sqrt()
    torch.testing.assert_close(pool(x), torch.cat((mu, sigma), dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", [StatsPooling(), AttentiveStatsPooling(8, attention_channels=4)])
def test_pooling_is_float32_under_bf16_autocast_and_finite_on_constant_input(pool):
    x = torch.randn(2, 8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool(x.bfloat16())
        constant = pool(torch.ones(2, 8, 1, dtype=torch.bfloat16))  # one frame, zero variance
    assert out.dtype == torch.float32 and constant.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(constant).all()


def test_pooling_gradient_is_finite_at_zero_variance():
    x = torch.ones(2, 8, 5, requires_grad=True)
    StatsPooling()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["ecapa_tdnn", "resnet18"])
def test_models_run_under_bf16_autocast(name):
    model = build_model(name, n_mels=80, channels=16).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 50, 80))
    assert out.shape == (2, model.embed_dim) and torch.isfinite(out).all()
