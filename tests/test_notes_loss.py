"""The lecture notes' SupCon loss: ``supcon_loss(..., normalize=False, base_temperature=1.0)``.

Two independent references, both written here: a transcription of the notes' ``SupConLoss``
(raw inner products, the row max taken with the diagonal in, ``scale_by_temperature``), and
SupContrast's formula with ``base_temperature`` (``clbook.reference.supcontrast_loss``, which
shares no code with ``clbook.losses``). Values and gradients are compared in float64.
"""

import math

import pytest
import torch

from clbook.losses import SupConLoss, supcon_loss
from clbook.methods import SupCon
from clbook.reference import supcontrast_loss


def notes_supcon(features, labels, temperature, scale_by_temperature=True):
    """The notes' ``SupConLoss.forward`` with ``labels``, operation for operation (no normalization)."""
    n = features.shape[0]
    mask = (labels.view(-1, 1) == labels.view(1, -1)).to(features.dtype)
    anchor_dot_contrast = features @ features.T / temperature
    # The row max over ALL columns, the diagonal included.
    logits_max = anchor_dot_contrast.max(dim=1, keepdim=True).values
    logits = anchor_dot_contrast - logits_max.detach()
    exp_logits = torch.exp(logits)
    logits_mask = torch.ones_like(mask) - torch.eye(n, dtype=features.dtype)
    positives_mask = mask * logits_mask
    negatives_mask = 1.0 - mask
    num_positives_per_row = positives_mask.sum(dim=1)
    denominator = (exp_logits * negatives_mask).sum(dim=1, keepdim=True) + (exp_logits * positives_mask).sum(
        dim=1, keepdim=True)
    log_probs = logits - torch.log(denominator)
    has = num_positives_per_row > 0
    log_probs = (log_probs * positives_mask).sum(dim=1)[has] / num_positives_per_row[has]
    loss = -log_probs
    if scale_by_temperature:
        loss = loss * temperature
    return loss.mean()


def batch(n=12, d=5, classes=3, scale=1.0, seed=0, singleton=False):
    g = torch.Generator().manual_seed(seed)
    f = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    if singleton:  # one sample alone in its class: an anchor without positives
        y[-1] = classes
    return f, y


def value_and_grad(fn, f):
    f = f.clone().requires_grad_(True)
    value = fn(f)
    (grad,) = torch.autograd.grad(value, f)
    return value.detach(), grad


# ----------------------------------------------------------------------------- the notes' code


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("singleton", [False, True])
def test_equals_the_notes_code_in_value_and_gradient(temperature, singleton):
    f, y = batch(singleton=singleton)
    ours, g_ours = value_and_grad(lambda x: supcon_loss(x, y, temperature=temperature, normalize=False,
                                                        base_temperature=1.0), f)
    theirs, g_theirs = value_and_grad(lambda x: notes_supcon(x, y, temperature), f)
    assert torch.isfinite(theirs)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


def test_the_notes_worked_example_is_their_printed_number():
    # The notes' 4-sample batch (seed 102, labels [1, 2, 1, 1], temperature 1): Out[14] 2.4826.
    torch.manual_seed(102)
    z = torch.randn(4, 8)
    y = torch.tensor([1, 2, 1, 1])
    ours = supcon_loss(z, y, temperature=1.0, normalize=False, base_temperature=1.0)
    assert ours.item() == pytest.approx(notes_supcon(z, y, 1.0).item(), rel=1e-6)
    assert round(ours.item(), 4) == 2.4826


def test_without_the_factor_it_is_the_notes_loss_divided_by_the_temperature():
    f, y = batch(seed=1)
    plain = supcon_loss(f, y, temperature=10.0, normalize=False)
    assert torch.allclose(plain, notes_supcon(f, y, 10.0, scale_by_temperature=False), rtol=1e-12)
    assert torch.allclose(10.0 * plain, notes_supcon(f, y, 10.0), rtol=1e-12)


def test_long_features_make_the_notes_code_nan_and_ours_finite():
    # |f|^2 ~ 100 * 16 = 1600 on the diagonal against |f_i . f_j| ~ 400 off it: after the notes'
    # row max (the diagonal) every other term is exp(-1000 or so) = 0 in float32.
    f, y = batch(n=8, d=16, classes=2, scale=10.0, seed=2)
    f = f.float()
    logits = f @ f.T
    off = logits.masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    assert (logits.diagonal() - off.max(dim=1).values > 104).all()  # the underflow condition, every row
    theirs = notes_supcon(f, y, 1.0)
    assert not torch.isfinite(theirs)
    ours, grad = value_and_grad(lambda x: supcon_loss(x, y, temperature=1.0, normalize=False,
                                                      base_temperature=1.0), f)
    assert torch.isfinite(ours) and torch.isfinite(grad).all()
    # And it is the right number: the same loss in float64, where nothing underflows that matters.
    assert ours.item() == pytest.approx(
        supcon_loss(f.double(), y, temperature=1.0, normalize=False, base_temperature=1.0).item(), rel=1e-5)


# ----------------------------------------------------------------------------- SupContrast's formula


@pytest.mark.parametrize("temperature, base", [(0.1, 1.0), (10.0, 1.0), (0.1, 0.07), (0.5, 2.0)])
@pytest.mark.parametrize("views", [1, 2])
def test_equals_supcontrast_with_base_temperature(temperature, base, views):
    # Every anchor has positives, so SupContrast's mean over all anchors is clbook's.
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, views, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2] * 3)
    for normalize in (False, True):
        ours, g_ours = value_and_grad(lambda x: supcon_loss(x, y, temperature=temperature, normalize=normalize,
                                                            base_temperature=base), f)

        def reference(x):
            x = torch.nn.functional.normalize(x, dim=-1) if normalize else x
            return supcontrast_loss(x, y, temperature=temperature, base_temperature=base)

        theirs, g_theirs = value_and_grad(reference, f)
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant, block", [("out", 4), ("in", None)])
def test_every_path_scales_alike(variant, block):
    f, y = batch(n=16, seed=4)
    plain = supcon_loss(f, y, temperature=0.3, normalize=False, variant=variant)
    kwargs = {} if block is None else {"block_size": block}  # block: the tiled path
    scaled = supcon_loss(f, y, temperature=0.3, normalize=False, variant=variant, base_temperature=0.07, **kwargs)
    assert torch.allclose(scaled, plain * 0.3 / 0.07, rtol=1e-12)


def test_module_and_method_forward_the_option():
    f, y = batch(seed=5)
    expected = supcon_loss(f, y, temperature=0.5, normalize=False, base_temperature=1.0)
    assert torch.equal(SupConLoss(0.5, normalize=False, base_temperature=1.0)(f, y), expected)
    assert SupCon(temperature=0.5, base_temperature=0.07).base_temperature == 0.07


def test_a_learnable_temperature_keeps_its_gradient_through_the_factor():
    f, y = batch(seed=6)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(supcon_loss(f, y, temperature=t, normalize=False, base_temperature=1.0), t)
    eps = 1e-6
    numeric = (notes_supcon(f, y, 0.5 + eps) - notes_supcon(f, y, 0.5 - eps)) / (2 * eps)
    assert grad.item() == pytest.approx(numeric.item(), rel=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "1", True])
def test_bad_base_temperature_is_a_one_line_value_error(bad):
    f, y = batch()
    with pytest.raises(ValueError, match="base_temperature") as err:
        supcon_loss(f, y, base_temperature=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(base_temperature=bad)
