"""Norm options of the projection and prediction heads, and the weight-standardized linear layer.

Each norm is checked against its formula written out here (mean and variance over the batch, over
the features, over the features of a group), not against the torch module it wraps.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbook.encoders import NORMS, PredictionHead, ProjectionHead, WSConv2d, WSLinear, make_norm
from clbook.methods import BYOL, SimSiam

EPS = 1e-5


def _standardize(x: torch.Tensor, dims) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


def _hidden(head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the norm, output of the norm) in the head's hidden layer."""
    first, norm = head.net[0], head.net[1]
    h = first(x)
    return h, norm(h)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_batch_norm_matches_formula(x):
    head = ProjectionHead(16, 8, 4, norm="batch").double().train()
    h, out = _hidden(head, x)
    torch.testing.assert_close(out, _standardize(h, 0))  # over the batch, per feature


def test_layer_norm_matches_formula(x):
    head = ProjectionHead(16, 8, 4, norm="layer").double()
    h, out = _hidden(head, x)
    torch.testing.assert_close(out, _standardize(h, 1))  # over the features, per sample


def test_group_norm_matches_formula(x):
    head = PredictionHead(16, 8, norm="group").double()
    h, out = _hidden(head, x)
    groups = head.net[1].num_groups
    assert 8 % groups == 0
    expected = _standardize(h.view(12, groups, 8 // groups), 2).view(12, 8)
    torch.testing.assert_close(out, expected)


def test_group_count_divides_width():
    (gn,) = make_norm("group", 20, groups=8)
    assert gn.num_groups == 5  # 8 does not divide 20; the largest count below it that does
    (gn,) = make_norm("group", 8, groups=8)
    assert gn.num_groups == 4  # at least two features per group


def test_no_norm_and_legacy_flags():
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm))
                   for m in ProjectionHead(16, 8, 4, norm=None).modules())
    assert isinstance(ProjectionHead(16, 8, 4, batchnorm=True).net[1], nn.BatchNorm1d)
    assert isinstance(ProjectionHead(16, 8, 4).net[1], nn.ReLU)
    assert isinstance(PredictionHead(16, 8).net[1], nn.BatchNorm1d)  # the predictor's default is unchanged
    assert isinstance(PredictionHead(16, 8, batchnorm=False).net[1], nn.ReLU)
    assert isinstance(ProjectionHead(16, 8, 4, batchnorm=True, output_batchnorm=True).net[-1], nn.BatchNorm1d)
    # norm overrides the flag
    assert isinstance(ProjectionHead(16, 8, 4, batchnorm=True, norm="layer").net[1], nn.LayerNorm)


def test_bad_norm_name():
    with pytest.raises(ValueError, match="norm must be one of"):
        ProjectionHead(16, 8, 4, norm="instance")
    assert None in NORMS


@pytest.mark.parametrize("norm", ["layer", "group", None])
def test_per_sample_norms_ignore_the_batch(norm, x):
    head = ProjectionHead(16, 8, 4, norm=norm, weight_standardization=True).double().train()
    alone = head(x[:1])
    with_others = head(x)[:1]
    torch.testing.assert_close(alone, with_others)


def test_batch_norm_depends_on_the_batch(x):
    head = ProjectionHead(16, 8, 4, norm="batch").double().train()
    assert not torch.allclose(head(x[:4])[:1], head(x)[:1])


def test_ws_linear_matches_formula(x):
    layer = WSLinear(16, 5).double()
    w = layer.weight
    w_hat = (w - w.mean(dim=1, keepdim=True)) / torch.sqrt(w.var(dim=1, unbiased=False, keepdim=True) + layer.eps)
    torch.testing.assert_close(layer(x), x @ w_hat.T + layer.bias)
    sw = layer.standardized_weight()
    torch.testing.assert_close(sw.mean(dim=1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(sw.var(dim=1, unbiased=False), torch.ones(5, dtype=torch.float64), rtol=1e-3, atol=1e-3)


def test_ws_linear_is_scale_invariant(x):
    layer = WSLinear(16, 5, bias=False, eps=1e-12).double()  # eps would break exact invariance
    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        scaled.weight.mul_(7.0).add_(3.0)  # a row's scale and offset are standardized away
    torch.testing.assert_close(layer(x), scaled(x), rtol=1e-4, atol=1e-4)


def test_ws_heads_use_ws_layers():
    head = PredictionHead(16, 8, norm="group", weight_standardization=True)
    assert sum(isinstance(m, WSLinear) for m in head.modules()) == 2
    with pytest.raises(ValueError, match="positive"):
        WSLinear(4, 3, eps=0.0)


def test_ws_conv_matches_formula_and_plain_conv():
    """WSConv2d = Conv2d with each output channel's kernel standardized over (in, kh, kw)."""
    torch.manual_seed(0)
    layer = WSConv2d(3, 4, 3, padding=1, stride=2).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = layer.weight
    flat = w.reshape(4, -1)
    w_hat = ((flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True)
                                                               + layer.eps)).reshape_as(w)
    plain = nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    with torch.no_grad():
        plain.weight.copy_(w_hat)
        plain.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), plain(x))
    sw = layer.standardized_weight().reshape(4, -1)
    torch.testing.assert_close(sw.mean(1), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        WSConv2d(1, 2, 3, eps=0)
    with pytest.raises(ValueError, match="padding_mode"):
        WSConv2d(1, 2, 3, padding_mode="reflect")


class _Twice(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("cls", [SimSiam, BYOL])
def test_per_view_batchnorm(cls):
    """Per view: batch norm's statistics over each view's B rows, as two separate passes give."""
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(8, 6, generator=g), 3 + torch.randn(8, 6, generator=g)
    encoder, head = nn.Linear(6, 6), ProjectionHead(6, 5, 4, norm="batch")
    method = cls(pred_hidden=3, per_view_batchnorm=True)
    method.setup(encoder, head)
    z, b = method._project(encoder, head, [v1, v2])
    torch.testing.assert_close(z, torch.cat([head(encoder(v1)), head(encoder(v2))]))
    joint = cls(pred_hidden=3)
    joint.setup(encoder, head)
    z_joint, _ = joint._project(encoder, head, [v1, v2])
    assert not torch.allclose(z, z_joint)  # the statistics span 2B rows there
    assert torch.isfinite(method.loss(encoder, head, [v1, v2], None, torch.arange(8)))


def test_pred_head_options_are_copied():
    options = {"norm": None}
    method = BYOL(pred_head=options)
    method.setup(nn.Identity(), ProjectionHead(6, 5, 4))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in method.predictor.modules())
    assert options == {"norm": None}
    with pytest.raises(ValueError, match="norm must be one of"):
        SimSiam(pred_head={"norm": "bogus"})
