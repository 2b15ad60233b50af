"""Learning without negatives: SimSiam's and BYOL's losses, the predictor, and both methods in pretrain."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clbook.encoders import PredictionHead, ProjectionHead, make_encoder
from clbook.losses import negative_cosine_loss, normalized_mse_loss
from clbook.methods import BYOL, METHODS, SimSiam, make_method
from clbook.training import pretrain


def pair(n=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("seed", range(4))
def test_losses_match_a_loop_over_rows(seed):
    p, z = pair(seed=seed)
    cos = [float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(len(p))]
    assert negative_cosine_loss(p, z).item() == pytest.approx(-sum(cos) / len(cos), rel=1e-12)
    # BYOL: squared distance of the unit vectors, computed as such.
    sq = [float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(len(p))]
    assert normalized_mse_loss(p, z).item() == pytest.approx(sum(sq) / len(sq), rel=1e-12)
    assert normalized_mse_loss(p, z).item() == pytest.approx(2 + 2 * negative_cosine_loss(p, z).item(), rel=1e-12)


def test_extremes_and_scale_invariance():
    p, _ = pair()
    assert negative_cosine_loss(p, 3 * p).item() == pytest.approx(-1.0)
    assert negative_cosine_loss(p, -p).item() == pytest.approx(1.0)
    assert normalized_mse_loss(p, 0.5 * p).item() == pytest.approx(0.0, abs=1e-12)
    assert normalized_mse_loss(p, -p).item() == pytest.approx(4.0)
    # A zero row has cosine 0 with anything: finite values and gradients.
    q = p.clone().requires_grad_(True)
    zero = torch.zeros_like(p)
    loss = negative_cosine_loss(q, zero)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(q.grad).all()


def test_stop_gradient_detaches_only_the_target():
    p, z = (t.clone().requires_grad_(True) for t in pair())
    for fn in (negative_cosine_loss, normalized_mse_loss):
        p.grad = z.grad = None
        fn(p, z).backward()
        assert p.grad is not None and z.grad is None
        p.grad = z.grad = None
        fn(p, z, stop_gradient=False).backward()
        assert p.grad is not None and z.grad is not None and z.grad.abs().sum() > 0


def test_gradcheck():
    p, z = (t.clone().requires_grad_(True) for t in pair(n=5, d=3))
    assert torch.autograd.gradcheck(lambda a, b: negative_cosine_loss(a, b, stop_gradient=False), (p, z))
    assert torch.autograd.gradcheck(lambda a, b: normalized_mse_loss(a, b, stop_gradient=False), (p, z))


@pytest.mark.parametrize("fn", [negative_cosine_loss, normalized_mse_loss])
def test_bad_input(fn):
    p, z = pair()
    with pytest.raises(ValueError, match="shapes must match"):
        fn(p, z[:-1])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fn(p[0], z[0])
    with pytest.raises(ValueError, match="floating-point"):
        fn(p.long(), z.long())
    bad = z.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(p, bad)
    with pytest.raises(ValueError, match="empty"):
        fn(p[:0], z[:0])


def test_constant_encoder_reaches_the_minimum():
    """Without negatives, mapping every input to one vector is a global minimum of both losses."""
    const = torch.ones(32, 8)
    assert negative_cosine_loss(const, const).item() == pytest.approx(-1.0)
    assert normalized_mse_loss(const, const).item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- predictor


def test_prediction_head_shapes_and_checks():
    head = PredictionHead(16, 4)
    out = head(torch.randn(10, 16))
    assert out.shape == (10, 16)
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in PredictionHead(16, 4, batchnorm=False).modules())
    with pytest.raises(ValueError, match="expects input of shape"):
        head(torch.randn(10, 8))
    with pytest.raises(ValueError, match="positive"):
        PredictionHead(16, 0)


def test_projection_head_batchnorm_option():
    head = ProjectionHead(8, 16, 4, batchnorm=True, output_batchnorm=True).train()
    z = head(torch.randn(64, 8))
    # The output BatchNorm has no affine part: each dimension is standardized over the batch.
    assert torch.allclose(z.mean(dim=0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.var(dim=0, correction=0), torch.ones(4), atol=1e-3)
    count = lambda h: sum(isinstance(m, nn.BatchNorm1d) for m in h.modules())  # noqa: E731
    assert count(ProjectionHead(8, 16, 4)) == 0 and count(ProjectionHead(8, 16, 4, batchnorm=True)) == 1


# ----------------------------------------------------------------------------- methods


def blobs(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def noise(x, g):
    return x + 0.1 * torch.randn(x.shape, generator=g)


def test_registered_and_options_checked():
    assert METHODS["simsiam"] is SimSiam and METHODS["byol"] is BYOL
    assert make_method("simsiam", temperature=0.1, stop_gradient=False).stop_gradient is False
    with pytest.raises(ValueError, match="no option"):
        make_method("byol", stop_gradient=False)
    with pytest.raises(ValueError, match="momentum"):
        BYOL(momentum=1.5)
    with pytest.raises(ValueError, match="final_momentum"):
        BYOL(momentum=0.99, final_momentum=0.9)


def test_simsiam_loss_is_the_symmetric_negative_cosine():
    enc, head = make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8)
    m = SimSiam(pred_hidden=4)
    m.setup(enc, head)
    m.eval()  # fixed BatchNorm statistics, so separate forward passes agree with the joint one
    x1, x2 = blobs(seed=1), blobs(seed=2)
    z1, z2 = head(enc(x1)), head(enc(x2))
    p1, p2 = m.predictor(z1), m.predictor(z2)
    expected = 0.5 * (negative_cosine_loss(p1, z2) + negative_cosine_loss(p2, z1))
    assert m.loss(enc, head, [x1, x2], None, torch.arange(64)).item() == pytest.approx(expected.item(), rel=1e-5)
    m_plain = SimSiam(predictor=False)
    m_plain.setup(enc, head)
    expected = -nn.functional.cosine_similarity(z1, z2).mean()
    assert m_plain.loss(enc, head, [x1, x2], None, torch.arange(64)).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="two views"):
        m.loss(enc, head, [x1], None, torch.arange(64))


def test_stop_gradient_switch_changes_the_gradient():
    x1, x2 = blobs(seed=1), blobs(seed=2)
    grads = {}
    for sg in (True, False):
        enc, head = make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8)
        m = SimSiam(pred_hidden=4, stop_gradient=sg)
        torch.manual_seed(0)
        m.setup(enc, head)
        m.loss(enc, head, [x1, x2], None, torch.arange(64)).backward()
        grads[sg] = enc.net[0].weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_byol_momentum_schedule_and_target():
    b = BYOL(momentum=0.9)
    assert b.momentum_at(0, 100) == pytest.approx(0.9)
    assert b.momentum_at(50, 100) == pytest.approx(1 - 0.1 * 0.5)
    assert b.momentum_at(100, 100) == pytest.approx(1.0)
    values = [b.momentum_at(k, 100) for k in range(101)]
    assert all(a <= c for a, c in zip(values, values[1:]))  # never decreases
    assert BYOL(momentum=0.5, final_momentum=0.5).momentum_at(37, 100) == 0.5

    enc, head = make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8)
    b.setup(enc, head)
    assert all(not p.requires_grad for p in b.target_encoder.parameters())
    assert set(map(id, b.trainable_parameters())) == set(map(id, b.predictor.parameters()))
    # After a step the target moved towards the online weights by exactly (1 - m).
    before = b.target_encoder.net[0].weight.clone()
    with torch.no_grad():
        enc.net[0].weight.add_(1.0)
    b.after_step(enc, head, 0, 100)
    assert torch.allclose(b.target_encoder.net[0].weight, 0.9 * before + 0.1 * enc.net[0].weight)


@pytest.mark.parametrize("method, options", [("simsiam", {}), ("simsiam", {"stop_gradient": False}),
                                             ("simsiam", {"predictor": False}), ("byol", {"momentum": 0.9})])
def test_methods_run_in_pretrain_and_log(method, options):
    X = blobs(n=96)
    h = pretrain(make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8, batchnorm=True), X,
                 method=method, method_options=options, augment=noise, epochs=2, batch_size=32, lr=1e-2,
                 progress=False)
    assert len(h.loss) == 2 and all(math.isfinite(v) for v in h.loss)
    assert len(h.metrics["proj_std"]) == 2 and 0 <= h.metrics["proj_std"][-1] <= 1 / math.sqrt(8) + 1e-9
    if method == "byol":
        assert 0.9 < h.metrics["momentum"][0] < h.metrics["momentum"][1] < 1.0


def test_collapse_monitor_on_a_constant_and_a_random_encoder():
    from clbook.experiments import collapse_monitor

    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(len(x), 4) * torch.tensor([1.0, -2.0, 0.5, 3.0])

    X = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    monitor = collapse_monitor(X, seed=0)
    out = monitor(Constant(), 1)
    assert out["std"] == 0.0 and out["uniformity"] == 0.0 and out["alignment"] == 0.0
    assert out["effective_rank"] == pytest.approx(1.0)
    assert out["nt_xent"] == pytest.approx(math.log(2 * 40 - 1), rel=1e-6)  # collapse sits at chance
    out = monitor(make_encoder("fc", seed=0).eval(), 1)
    assert out["std"] > 0 and out["uniformity"] < 0 and out["effective_rank"] > 2 and out["alignment"] > 0
    assert monitor(make_encoder("fc", seed=0).eval(), 2) == out  # the same views every epoch


def test_plot_collapse_draws_every_run():
    import matplotlib

    matplotlib.use("Agg")
    from clbook.training import History
    from clbook.viz import plot_collapse

    h = History(loss=[1.0, 0.5], val_acc=[0.5, 0.6], best_epoch=2,
                metrics={"proj_std": [0.1, 0.05], "uniformity": [-1.0, -0.5], "effective_rank": [5.0, 3.0]})
    axes = plot_collapse({"a": h, "b": h}, proj_dim=64)
    assert len(axes) == 4 and all(len(ax.get_lines()) >= 2 for ax in axes)
