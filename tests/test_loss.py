"""Margin heads against hand-computed logits and plain cross-entropy; the margin schedule."""

import math

import pytest
import torch
import torch.nn.functional as F

from loss import HEADS, AAMSoftmaxHead, AMSoftmaxHead, MarginSchedule, SubcenterAAMHead, build_head

SCALE = 30.0


def unit_circle_head(head_class, margin, **options):
    """A 2-d head with class 0 at angle 0 and class 1 at angle pi/2, so that theta can be chosen by hand."""
    head = head_class(2, 2, margin=margin, scale=SCALE, **options)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    return head


def at_angle(theta: float) -> torch.Tensor:
    return torch.tensor([[math.cos(theta), math.sin(theta)]]) * 3.0  # (1, 2); the norm must not matter


def two_class_loss(target_logit: float, other_logit: float) -> float:
    return -target_logit + math.log(math.exp(target_logit) + math.exp(other_logit))


@pytest.mark.parametrize("name", ["am", "aam"])
def test_margin_zero_is_cross_entropy_on_scaled_cosines(name):
    torch.manual_seed(0)
    head = build_head(name, embed_dim=16, num_speakers=10, margin=0.0, scale=SCALE)
    embeddings, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
    loss, logits = head(embeddings, labels)
    cosine = F.normalize(embeddings) @ F.normalize(head.weight).T
    torch.testing.assert_close(logits, SCALE * cosine)
    torch.testing.assert_close(loss, F.cross_entropy(SCALE * cosine, labels))


def test_aam_target_logit_is_s_cos_theta_plus_m():
    theta, margin = 1.0, 0.2  # a sizeable loss, so that rel=1e-5 is within float32 precision
    head = unit_circle_head(AAMSoftmaxHead, margin)
    loss, logits = head(at_angle(theta), torch.tensor([0]))
    target, other = SCALE * math.cos(theta + margin), SCALE * math.cos(math.pi / 2 - theta)
    assert loss.item() == pytest.approx(two_class_loss(target, other), rel=1e-5)
    torch.testing.assert_close(logits, SCALE * torch.tensor([[math.cos(theta), math.sin(theta)]]))  # no margin


def test_am_target_logit_is_s_times_cos_theta_minus_m():
    theta, margin = 1.0, 0.2  # a sizeable loss, so that rel=1e-5 is within float32 precision
    head = unit_circle_head(AMSoftmaxHead, margin)
    loss, _ = head(at_angle(theta), torch.tensor([0]))
    target, other = SCALE * (math.cos(theta) - margin), SCALE * math.cos(math.pi / 2 - theta)
    assert loss.item() == pytest.approx(two_class_loss(target, other), rel=1e-5)


def test_aam_falls_back_to_a_linear_penalty_beyond_pi_minus_m():
    margin = 0.2
    head = AAMSoftmaxHead(2, 2, margin=margin, scale=SCALE)
    cosine = torch.tensor([math.cos(3.0), math.cos(2.5)])  # theta = 3.0 > pi - m; theta = 2.5 < pi - m
    expected = torch.tensor([math.cos(3.0) - math.sin(margin) * margin, math.cos(2.5 + margin)])
    torch.testing.assert_close(head.target_cosine(cosine, margin), expected)


def test_aam_easy_margin_applies_only_to_positive_cosines():
    head = AAMSoftmaxHead(2, 2, margin=0.2, scale=SCALE, easy_margin=True)
    cosine = torch.tensor([math.cos(0.5), math.cos(2.0)])
    torch.testing.assert_close(head.target_cosine(cosine, 0.2), torch.tensor([math.cos(0.7), math.cos(2.0)]))


def test_aam_gradient_is_finite_when_the_embedding_is_its_class_weight():
    head = unit_circle_head(AAMSoftmaxHead, 0.2)
    embedding = torch.tensor([[1.0, 0.0]], requires_grad=True)  # cos theta = 1 exactly
    head(embedding, torch.tensor([0]))[0].backward()
    assert torch.isfinite(embedding.grad).all() and torch.isfinite(head.weight.grad).all()


def test_subcenter_with_one_subcenter_is_aam():
    torch.manual_seed(0)
    aam = AAMSoftmaxHead(16, 10, margin=0.2, scale=SCALE)
    subcenter = SubcenterAAMHead(16, 10, margin=0.2, scale=SCALE, subcenters=1)
    subcenter.load_state_dict(aam.state_dict())
    embeddings, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
    for got, expected in zip(subcenter(embeddings, labels), aam(embeddings, labels)):
        torch.testing.assert_close(got, expected)


def test_subcenter_cosine_is_the_nearest_subcenter():
    torch.manual_seed(0)
    head = SubcenterAAMHead(16, 10, margin=0.2, scale=SCALE, subcenters=3)
    embeddings = torch.randn(4, 16)
    all_cosines = F.normalize(embeddings) @ F.normalize(head.weight).T  # (4, 30), speaker-major
    _, logits = head(embeddings, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(logits, SCALE * all_cosines.reshape(4, 10, 3).amax(-1))


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_is_float32_under_autocast_and_gives_unit_class_centers(name):
    head = build_head(name, embed_dim=16, num_speakers=10, margin=0.2, scale=SCALE, subcenters=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a step's margin (the schedule's), for every head
        loss, logits = head(torch.randn(4, 16).bfloat16(), torch.tensor([0, 1, 2, 3]), margin=0.1)
    assert loss.dtype == logits.dtype == torch.float32 and loss.ndim == 0 and logits.shape == (4, 10)
    centers = head.class_centers()
    assert centers.shape == (10, 16)
    torch.testing.assert_close(centers.norm(dim=1), torch.ones(10))


def test_unknown_head_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match="unknown head 'arcface'; choose one of: softmax, am, aam, subcenter_aam"):
        build_head("arcface", embed_dim=16, num_speakers=10, margin=0.2, scale=SCALE)


def test_margin_schedule_ramps_linearly_between_start_and_end():
    schedule = MarginSchedule(0.2, 2, 6)
    assert schedule(0) == 0.0 and schedule(1.99) == 0.0
    assert schedule(2) == 0.0
    assert schedule(4) == pytest.approx(0.1)
    assert schedule(5.5) == pytest.approx(0.175)  # fractional epochs: updated per step
    assert schedule(6) == pytest.approx(0.2) and schedule(50) == pytest.approx(0.2)


def test_margin_schedule_with_start_equal_to_end_is_a_step():
    schedule = MarginSchedule(0.2, 3, 3)
    assert schedule(2.9) == 0.0 and schedule(3) == 0.2
    with pytest.raises(ValueError):
        MarginSchedule(0.2, 4, 3)


@pytest.mark.parametrize("name", ["am", "aam", "subcenter_aam"])
def test_margin_passed_to_forward_overrides_the_heads_own_without_changing_it(name):
    torch.manual_seed(0)
    emb, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
    head = build_head(name, embed_dim=16, num_speakers=10, margin=0.2, scale=SCALE, subcenters=2)
    same_weights = build_head(name, embed_dim=16, num_speakers=10, margin=0.1, scale=SCALE, subcenters=2)
    same_weights.load_state_dict(head.state_dict())
    torch.testing.assert_close(head(emb, labels, margin=0.1)[0], same_weights(emb, labels)[0])
    assert head.margin == 0.2 and head(emb, labels)[0] > head(emb, labels, margin=0.1)[0]
