"""MoCo and the memory-bank method run through clbook.training.pretrain: their state behaves as documented."""

import math

import pytest
import torch
import torch.nn.functional as F

from clbook.encoders import ProjectionHead, make_encoder
from clbook.losses import info_nce_loss
from clbook.methods import METHODS, MemoryBankMethod, MoCo, make_method
from clbook.training import pretrain


def blobs(n=96, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def noise(x, g):
    return x + 0.1 * torch.randn(x.shape, generator=g)


def nets(seed=0):
    return make_encoder("mlp", in_dim=8, seed=seed), ProjectionHead(16, 16, 8)


def test_registered_and_built_by_name():
    assert METHODS["moco"] is MoCo and METHODS["memory_bank"] is MemoryBankMethod
    m = make_method("moco", temperature=0.3, queue_size=64, momentum=0.9)
    assert (m.temperature, m.queue_size, m.momentum) == (0.3, 64, 0.9)
    with pytest.raises(ValueError, match="momentum"):
        MoCo(momentum=1.5)
    with pytest.raises(ValueError, match="queue_size"):
        MoCo(queue_size=0)
    with pytest.raises(ValueError, match="bank_momentum"):
        MemoryBankMethod(bank_momentum=1.0)


@pytest.mark.parametrize("momentum", [0.0, 0.9, 1.0])
def test_moco_key_networks_follow_the_momentum_rule(momentum):
    X, _ = blobs()
    encoder, head = nets()
    start = {k: v.clone() for k, v in encoder.state_dict().items()}
    moco = MoCo(temperature=0.2, queue_size=40, momentum=momentum)
    h = pretrain(encoder, head, X, method=moco, augment=noise, epochs=2, batch_size=16, lr=0.05, progress=False)
    assert len(h.metrics["pos_cos"]) == len(h.metrics["neg_cos"]) == 2
    # The key networks are never trained by the optimizer, only moved by momentum_update.
    assert all(not p.requires_grad for p in moco.key_encoder.parameters())
    assert moco.trainable_parameters() == []
    for name, p in moco.key_encoder.state_dict().items():
        if momentum == 0.0:
            assert torch.equal(p, encoder.state_dict()[name])  # copied after every step
        elif momentum == 1.0:
            assert torch.equal(p, start[name])  # never moves
        else:
            assert not torch.equal(p, encoder.state_dict()[name]) and not torch.equal(p, start[name])
    # 12 steps of 16 keys into a queue of 40: full, the pointer wrapped to 12 * 16 mod 40.
    assert len(moco.queue) == 40 and int(moco.queue.ptr) == (12 * 16) % 40
    assert "queue.queue" in moco.state_dict() and "key_encoder.net.0.weight" in moco.state_dict()


def test_moco_one_step_by_hand():
    """The loss of a step is info_nce_loss(q, k, queue) and the queue then receives k."""
    X, _ = blobs(n=32)
    encoder, head = nets()
    moco = MoCo(temperature=0.5, queue_size=8, momentum=0.9)
    moco.setup(encoder, head)
    v1, v2 = X[:4], X[:4] + 0.5
    first = moco.loss(encoder, head, [v1, v2], None, torch.arange(4))
    k = F.normalize(head(encoder(v2)), dim=1).detach()  # key networks are still copies
    torch.testing.assert_close(first, info_nce_loss(head(encoder(v1)), k, None, 0.5))  # empty queue: in-batch
    moco.after_step(encoder, head, 0, 2)
    torch.testing.assert_close(moco.queue.features(), k)
    second = moco.loss(encoder, head, [v2, v1], None, torch.arange(4))
    k2 = F.normalize(head(encoder(v1)), dim=1).detach()
    torch.testing.assert_close(second, info_nce_loss(head(encoder(v2)), k2, k, 0.5))
    second.backward()
    assert all(p.grad is None for p in moco.key_encoder.parameters())


def test_memory_bank_method_updates_every_sample_and_logs_staleness():
    X, _ = blobs(n=64)
    encoder, head = nets()
    method = MemoryBankMethod(temperature=0.1, num_negatives=20, bank_momentum=0.5, seed=0)
    h = pretrain(encoder, head, X, method=method, augment=noise, epochs=3, batch_size=16, lr=0.05, progress=False)
    assert method.num_samples == 64 and bool(method.bank.seen.all())
    cos = h.metrics["bank_cos"]
    # Epoch 1 meets every sample for the first time: no stored vector is older than the step yet.
    assert len(cos) == 3 and math.isnan(cos[0]) and all(-1.0 <= c <= 1.0 for c in cos[1:])
    torch.testing.assert_close(method.bank.bank.norm(dim=1), torch.ones(64))


def test_memory_bank_with_bank_positive_stores_a_first_met_sample_before_its_loss():
    X, _ = blobs(n=32)
    encoder, head = nets()
    method = MemoryBankMethod(temperature=0.5, num_negatives=6, positive="bank", seed=1)
    assert method.n_views == 1
    method.num_samples = 32
    method.setup(encoder, head)
    idx = torch.tensor([3, 5, 7, 9])
    loss = method.loss(encoder, head, [X[idx]], None, idx)
    f = head(encoder(X[idx]))
    # Each positive is the sample's own feature; nothing else is stored yet, so the negatives are in-batch.
    torch.testing.assert_close(method.bank.get(idx), F.normalize(f, dim=1).detach())
    torch.testing.assert_close(loss, info_nce_loss(f, F.normalize(f, dim=1).detach(), None, 0.5))
    method.after_step(encoder, head, 0, 1)
    idx2 = torch.tensor([0, 1, 2])
    loss2 = method.loss(encoder, head, [X[idx2]], None, idx2)
    f2 = head(encoder(X[idx2]))
    # Second step: the four stored rows are the only possible negatives (at most 6 asked).
    torch.testing.assert_close(loss2, info_nce_loss(f2, F.normalize(f2, dim=1).detach(), method.bank.get(idx), 0.5))


def test_memory_bank_with_view_positive_one_step_by_hand():
    X, _ = blobs(n=32)
    encoder, head = nets()
    method = MemoryBankMethod(temperature=0.3, num_negatives=5, seed=2)
    assert method.n_views == 2
    method.num_samples = 32
    method.setup(encoder, head)
    first = torch.tensor([10, 11, 12, 13, 14])
    method.loss(encoder, head, [X[first], X[first] + 0.1], None, first)
    method.after_step(encoder, head, 0, 2)
    idx = torch.tensor([0, 1])
    v1, v2 = X[idx], X[idx] + 0.2
    loss = method.loss(encoder, head, [v1, v2], None, idx)
    # The positive is the second view (with gradient); the negatives are the 5 stored rows, in some order.
    expected = info_nce_loss(head(encoder(v1)), head(encoder(v2)), method.bank.get(first), 0.3)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_memory_bank_method_checks_its_sizes():
    X, _ = blobs(n=32)
    with pytest.raises(ValueError, match="num_negatives"):
        pretrain(*nets(), X, method="memory_bank", method_options={"num_negatives": 30}, augment=noise,
                 epochs=1, batch_size=8, progress=False)
