"""The state that ties a method together, checked against hand computations.

* every parameter of every momentum network (MoCo's key encoder and key head, BYOL's target
  encoder and target head) follows the EMA after a real training step;
* BYOL's momentum follows the paper's cosine schedule at interior steps;
* SimSiam's gradient is that of the paper's loss, with and without the stop-gradient;
* ``pretrain`` hands back the weights of the epoch that validation chose, not the last ones.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbook.encoders import ProjectionHead, make_encoder
from clbook.losses import supcon_loss
from clbook.methods import BYOL, Method, MoCo, SimSiam
from clbook.training import extract_features, knn_accuracy, pretrain, train_step


def blobs(n=64, d=8, classes=3, spread=2.0, seed=0, points_seed=None):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * spread
    if points_seed is not None:  # the same centres, other points
        g = torch.Generator().manual_seed(points_seed)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def noise(x, g):
    return x + 0.1 * torch.randn(x.shape, generator=g)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# The momentum copies of each method and the online network each one follows.
COPIES = {MoCo: {"key_encoder": "encoder", "key_head": "head"},
          BYOL: {"target_encoder": "encoder", "target_head": "head"}}


def paper_momentum(base: float, k: int, total: int) -> float:
    """BYOL (Grill et al., 2020, section 3.2): tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2


def one_step(method: Method, step: int, total: int, seed: int = 0):
    """One real optimizer step of ``method`` (the loop's train_step); the networks and snapshots around it."""
    torch.manual_seed(seed)
    X, _ = blobs(n=32)
    encoder = make_encoder("mlp", in_dim=8, seed=seed)
    head = ProjectionHead(16, 16, 8, batchnorm=True)  # buffers too: running statistics
    method.num_samples = len(X)
    method.setup(encoder, head)
    online = {"encoder": encoder, "head": head}
    # Start the copies away from the online networks (as after earlier steps), so the EMA shows.
    with torch.no_grad():
        for name in COPIES[type(method)]:
            for p in getattr(method, name).parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = {name: snapshot(getattr(method, name)) for name in COPIES[type(method)]}
    params = [*encoder.parameters(), *head.parameters(), *method.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    online_before = {name: snapshot(net) for name, net in online.items()}
    train_step(method, encoder, head, opt, None, X[:16], None, torch.arange(16), noise,
               torch.Generator().manual_seed(seed), step, total)
    return online, online_before, before


@pytest.mark.parametrize("make, m", [(lambda: MoCo(temperature=0.2, queue_size=64, momentum=0.9), 0.9),
                                     (lambda: BYOL(momentum=0.9), paper_momentum(0.9, 25, 100))],
                         ids=["moco", "byol"])
def test_every_parameter_of_every_momentum_network_follows_the_ema(make, m):
    method = make()
    online, online_before, before = one_step(method, step=25, total=100)
    # Every frozen parameter of the method belongs to one of the momentum copies checked below.
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    listed = {f"{copy_name}.{n}" for copy_name in COPIES[type(method)]
              for n, _ in getattr(method, copy_name).named_parameters()}
    assert frozen == listed
    for copy_name, online_name in COPIES[type(method)].items():
        target, net = getattr(method, copy_name), online[online_name]
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())
        assert buffers or online_name == "encoder", "the head has running statistics: the test covers buffers"
        for name, value in target.state_dict().items():
            if name in params:
                new = params[name].detach()
                assert not torch.equal(new, online_before[online_name][name]), f"{online_name}.{name} did not train"
                expected = m * before[copy_name][name] + (1 - m) * new
                torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6,
                                           msg=lambda s, n=f"{copy_name}.{name}": f"{n} is not the EMA: {s}")
            else:  # buffers (BatchNorm statistics) are copied
                torch.testing.assert_close(value, buffers[name], rtol=0, atol=0, msg=f"{copy_name} buffer {name}")


@pytest.mark.parametrize("base", [0.9, 0.99, 0.996])
def test_byol_momentum_follows_the_papers_cosine_schedule(base):
    b = BYOL(momentum=base)
    for k in (0, 10, 25, 37, 50, 80, 99, 100):
        assert b.momentum_at(k, 100) == pytest.approx(paper_momentum(base, k, 100), abs=1e-12), k
    # With a final momentum below 1 the same cosine runs from the first value to the last.
    b = BYOL(momentum=0.9, final_momentum=0.99)
    for k in (10, 25, 37, 80):
        expected = 0.99 - (0.99 - 0.9) * (math.cos(math.pi * k / 100) + 1) / 2
        assert b.momentum_at(k, 100) == pytest.approx(expected, abs=1e-12), k


def test_byol_logs_the_scheduled_momentum_of_each_epochs_last_step():
    X, _ = blobs(n=48)
    byol = BYOL(momentum=0.9)
    h = pretrain(make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8, batchnorm=True), X, method=byol,
                 augment=noise, epochs=3, batch_size=16, lr=1e-2, progress=False)
    # 3 steps per epoch, 9 in all: the last steps of the epochs are steps 2, 5 and 8 (0-based).
    assert h.metrics["momentum"] == pytest.approx([paper_momentum(0.9, k, 9) for k in (2, 5, 8)], abs=1e-12)


class Saboteur(Method):
    """SupCon with labels for ``good`` epochs; after that it wipes the encoder after every step.

    Validation accuracy is then certain to peak early: the wiped encoder maps every input to 0.
    """

    name = "saboteur"
    n_views = 1
    needs_labels = True
    needs_augment = False

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good, self.epoch = good, 0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch

    def loss(self, encoder, head, views, y, index):
        return supcon_loss(head(encoder(views[0])), y, temperature=0.5)

    def after_step(self, encoder, head, step, total_steps):
        if self.epoch > self.good:
            with torch.no_grad():
                for p in encoder.parameters():
                    p.zero_()


def test_pretrain_returns_the_weights_of_the_best_validation_epoch():
    X, y = blobs(n=240, spread=0.7, seed=1)
    Xv, yv = blobs(n=120, spread=0.7, seed=1, points_seed=2)
    encoder = make_encoder("mlp", in_dim=8, seed=0)
    states = {}

    def keep(enc, epoch):  # the encoder as it ends each epoch, before validation looks at it
        states[epoch] = snapshot(enc)
        return {}

    epochs = 4
    h = pretrain(encoder, ProjectionHead(16, 16, 8), X, y, method=Saboteur(good=2), epochs=epochs, batch_size=48,
                 lr=0.02, val=(X, y, Xv, yv), knn_k=5, on_epoch_end=keep, progress=False)
    # Validation accuracy recomputed from the kept states: each epoch's score is that epoch's encoder.
    twin = copy.deepcopy(encoder)
    for epoch, state in states.items():
        twin.load_state_dict(state)
        acc = knn_accuracy(extract_features(twin, X), y, extract_features(twin, Xv), yv, k=5)
        assert h.val_acc[epoch - 1] == pytest.approx(acc, abs=1e-12), epoch
    best = max(range(1, epochs + 1), key=lambda e: (h.val_acc[e - 1], -e))  # the first of the best
    assert best < epochs and h.val_acc[-1] < h.val_acc[best - 1], h.val_acc  # the test needs an early peak
    assert h.best_epoch == best
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, states[best][name]), f"{name} is not epoch {best}'s"
    assert not encoder.training


def test_pretrain_without_validation_keeps_the_last_weights():
    X, y = blobs(n=96)
    encoder = make_encoder("mlp", in_dim=8, seed=0)
    states = {}
    h = pretrain(encoder, ProjectionHead(16, 16, 8), X, y, method=Saboteur(good=5), epochs=3, batch_size=32,
                 lr=0.02, on_epoch_end=lambda enc, e: states.__setitem__(e, snapshot(enc)) or {}, progress=False)
    assert h.best_epoch == 3 and h.val_acc == []
    assert all(torch.equal(v, states[3][k]) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_simsiam_gradient_is_the_papers_with_and_without_stop_gradient(stop_gradient):
    """Chen and He (2021), Algorithm 1: L = D(p1, z2) / 2 + D(p2, z1) / 2, D(p, z) = -cos(p, stopgrad(z))."""
    X, _ = blobs(n=32)
    x1, x2 = noise(X, torch.Generator().manual_seed(1)), noise(X, torch.Generator().manual_seed(2))
    encoder, head = make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8, batchnorm=True)
    method = SimSiam(pred_hidden=4, stop_gradient=stop_gradient)
    torch.manual_seed(0)
    method.setup(encoder, head)
    params = [*encoder.parameters(), *head.parameters(), *method.predictor.parameters()]
    ours = torch.autograd.grad(method.loss(encoder, head, [x1, x2], None, torch.arange(32)), params)

    def target(z):
        return z.detach() if stop_gradient else z

    z = head(encoder(torch.cat([x1, x2])))  # one batch of both views, as the method computes it
    p = method.predictor(z)
    z1, z2, p1, p2 = z[:32], z[32:], p[:32], p[32:]
    paper = -0.5 * (F.cosine_similarity(p1, target(z2)).mean() + F.cosine_similarity(p2, target(z1)).mean())
    for a, b in zip(ours, torch.autograd.grad(paper, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
