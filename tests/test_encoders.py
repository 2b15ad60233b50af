"""Encoder and projection-head shapes, seeding and input checks."""

import pytest
import torch
import torch.nn.functional as F

from clbook.encoders import ConvEncoder, FCEncoder, MLPEncoder, ProjectionHead, make_encoder


@pytest.mark.parametrize(
    "encoder, x, out_dim",
    [
        (MLPEncoder(), torch.randn(7, 4), 16),
        (MLPEncoder(in_dim=3, hidden=8, out_dim=5), torch.randn(2, 3), 5),
        (ConvEncoder(), torch.rand(6, 1, 28, 28), 128),
        (ConvEncoder(out_dim=32, channels=(4, 8)), torch.rand(3, 1, 28, 28), 32),
        (FCEncoder(), torch.rand(6, 1, 28, 28), 128),
    ],
)
def test_output_shapes_and_gradients(encoder, x, out_dim):
    out = encoder(x)
    assert out.shape == (x.shape[0], out_dim) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_projection_head_shape():
    assert ProjectionHead(128, 64, 32)(torch.randn(5, 128)).shape == (5, 32)


@pytest.mark.parametrize(
    "encoder, bad",
    [(MLPEncoder(), torch.randn(4, 5)), (ConvEncoder(), torch.rand(4, 28, 28)),
     (FCEncoder(), torch.rand(4, 1, 32, 32)), (ConvEncoder(), torch.rand(4, 3, 28, 28))],
)
def test_wrong_input_shape_raises(encoder, bad):
    with pytest.raises(ValueError, match="expects input of shape"):
        encoder(bad)


def test_make_encoder_seeded_twins_are_identical_and_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = make_encoder("cnn", seed=5), make_encoder("cnn", seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # seeding an encoder leaves the global RNG alone
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = make_encoder("cnn", seed=6)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_make_encoder_unknown_kind():
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("resnet")


def test_conv_encoder_layout_does_not_change_the_function():
    # The encoder stores activations channels-last for speed; the same weights applied in the
    # plain NCHW layout with torch.nn.functional must give the same features.
    enc = make_encoder("cnn", seed=3).eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    conv1, conv2 = enc.features[0], enc.features[3]
    h = F.max_pool2d(F.relu(F.conv2d(x, conv1.weight.contiguous(), conv1.bias, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, conv2.weight.contiguous(), conv2.bias, padding=1)), 2)
    expected = F.linear(h.reshape(5, -1), enc.fc.weight, enc.fc.bias)
    with torch.no_grad():
        assert torch.allclose(enc(x), expected, atol=1e-5)
