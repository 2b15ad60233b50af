"""clbook.memory: the queue's order and resume, the bank's update against a hand computation,
the momentum (EMA) update, and no gradient through any of them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbook.memory import FeatureQueue, MemoryBank, momentum_update


def test_momentum_update_formula_and_buffers():
    torch.manual_seed(0)
    online, target = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    online(torch.randn(8, 3))  # moves online's running statistics
    before = {k: v.clone() for k, v in target.state_dict().items()}
    momentum_update(target, online, 0.9)
    for name, p in target.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(online.named_parameters())[name]
        torch.testing.assert_close(p, expected)
        assert not p.requires_grad or p.grad is None
    torch.testing.assert_close(target[1].running_mean, online[1].running_mean)  # buffers copied
    momentum_update(target, online, 0.0)
    for p, q in zip(target.parameters(), online.parameters()):
        assert torch.equal(p, q)


def test_momentum_update_rejects_mismatched_modules_and_bad_m():
    with pytest.raises(ValueError, match="shape"):
        momentum_update(nn.Linear(3, 2), nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError, match="names"):
        momentum_update(nn.Linear(3, 2, bias=False), nn.Linear(3, 2), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(nn.Linear(3, 2), nn.Linear(3, 2), 1.5)


# ----------------------------------------------------------------------------- FeatureQueue


def labelled_keys(start, n, dim=3):
    """n unit keys whose first coordinate, before normalization, records their arrival order."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return torch.stack([ids, torch.ones(n), torch.zeros(n)], dim=1)[:, :dim]


def arrival(queue):
    """Arrival numbers of the stored keys (inverting labelled_keys' normalization)."""
    f = queue.features()
    return (f[:, 0] / f[:, 1]).round().long().tolist()


def test_queue_fills_then_wraps_around_oldest_first():
    q = FeatureQueue(5, 3)
    assert len(q) == 0 and q.features().shape == (0, 3)
    q.enqueue(labelled_keys(0, 2))
    assert arrival(q) == [0, 1]
    q.enqueue(labelled_keys(2, 2))
    assert arrival(q) == [0, 1, 2, 3]
    q.enqueue(labelled_keys(4, 3))  # 4 fills the last row, 5 and 6 overwrite the two oldest
    assert arrival(q) == [5, 6, 2, 3, 4] and len(q) == 5 and int(q.ptr) == 2
    q.enqueue(labelled_keys(7, 4))
    assert arrival(q) == [10, 6, 7, 8, 9]  # row 1 (key 6) is now the oldest
    q.enqueue(labelled_keys(11, 12))  # larger than the queue: only the newest 5 are kept
    assert sorted(arrival(q)) == [18, 19, 20, 21, 22]
    torch.testing.assert_close(q.features().norm(dim=1), torch.ones(5))  # stored normalized


def test_queue_agrees_with_lightly_bank_when_batch_divides_size(peer):
    MemoryBankModule = peer("lightly.models.modules.memory_bank", "lightly").MemoryBankModule

    lightly_bank = MemoryBankModule(size=(12, 4), feature_dim_first=False)
    ours = FeatureQueue(12, 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(7):  # more than two laps
        keys = F.normalize(torch.randn(3, 4, generator=g), dim=1)
        lightly_bank(keys, update=True)
        ours.enqueue(keys)
    torch.testing.assert_close(ours.features(), lightly_bank.bank)


def test_queue_resumes_from_state_dict():
    g = torch.Generator().manual_seed(1)
    a = FeatureQueue(6, 4)
    for _ in range(3):
        a.enqueue(torch.randn(4, 4, generator=g))
    b = FeatureQueue(6, 4)
    b.load_state_dict(a.state_dict())
    nxt = torch.randn(4, 4, generator=g)
    a.enqueue(nxt)
    b.enqueue(nxt)
    assert torch.equal(a.features(), b.features()) and int(a.ptr) == int(b.ptr) and len(a) == len(b) == 6
    with pytest.raises(RuntimeError):
        FeatureQueue(5, 4).load_state_dict(a.state_dict())  # a different size is refused


def test_queue_holds_no_gradient_and_features_are_a_copy():
    q = FeatureQueue(4, 2)
    keys = torch.randn(3, 2, requires_grad=True)
    q.enqueue(keys * 2)
    f = q.features()
    assert not f.requires_grad and not q.queue.requires_grad
    q.enqueue(torch.randn(3, 2))
    assert not torch.equal(f, q.features())  # the earlier copy did not change


def test_queue_input_checks():
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(0, 3)
    q = FeatureQueue(4, 3)
    with pytest.raises(ValueError, match="shape"):
        q.enqueue(torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        q.enqueue(torch.full((2, 3), float("nan")))


# ----------------------------------------------------------------------------- MemoryBank


def test_bank_update_formula_against_hand_computation():
    bank = MemoryBank(4, 2, momentum=0.5, generator=torch.Generator().manual_seed(0))
    # A first update stores the (normalized) feature itself: the random initial row is not averaged in.
    bank.update(torch.tensor([0, 2, 3]), torch.tensor([[2.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]))
    torch.testing.assert_close(bank.get(torch.tensor([0, 2, 3])), torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]))
    assert bank.seen.tolist() == [True, False, True, True]
    row1 = bank.get(torch.tensor([1]))
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 3.0], [-0.8, 0.6]]))
    # Row 0: normalize(0.5 * (1, 0) + 0.5 * (0, 1)) = (1, 1) / sqrt(2).
    # Row 2: normalize(0.5 * (0.6, 0.8) + 0.5 * (-0.8, 0.6)) = (-0.2, 1.4) / sqrt(2).
    s = 2 ** 0.5
    expected = torch.tensor([[1 / s, 1 / s], [-0.2 / s, 1.4 / s], [-1.0, 0.0]])
    torch.testing.assert_close(bank.get(torch.tensor([0, 2, 3])), expected)
    assert torch.equal(bank.get(torch.tensor([1])), row1)  # untouched rows stay as they were
    zero = MemoryBank(3, 2, momentum=0.0)
    zero.update(torch.tensor([1]), torch.tensor([[3.0, 4.0]]))
    zero.update(torch.tensor([1]), torch.tensor([[0.0, -2.0]]))
    torch.testing.assert_close(zero.get(torch.tensor([1])), torch.tensor([[0.0, -1.0]]))  # m = 0 overwrites


def test_bank_negatives_exclude_the_batch_and_are_reproducible():
    bank = MemoryBank(10, 3)
    bank.bank.copy_(torch.arange(10.0)[:, None].expand(10, 3))  # row i holds the value i
    batch = torch.tensor([0, 3, 7])
    drawn = bank.negatives(7, exclude=batch, generator=torch.Generator().manual_seed(0))
    assert sorted(drawn[:, 0].long().tolist()) == [1, 2, 4, 5, 6, 8, 9]  # all others, each once
    a = bank.negatives(4, exclude=batch, generator=torch.Generator().manual_seed(5))
    b = bank.negatives(4, exclude=batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="only 7"):
        bank.negatives(8, exclude=batch)


def test_bank_negatives_seen_only_never_returns_a_random_row():
    bank = MemoryBank(10, 3)
    bank.update(torch.tensor([2, 4, 6]), torch.ones(3, 3))
    drawn = bank.negatives(5, exclude=torch.tensor([4]), seen_only=True)
    assert drawn.shape == (2, 3)  # only rows 2 and 6 were ever stored
    torch.testing.assert_close(drawn, torch.full((2, 3), 3 ** -0.5))
    assert bank.negatives(5, exclude=torch.tensor([2, 4, 6]), seen_only=True).shape == (0, 3)


def test_bank_resumes_and_holds_no_gradient():
    a = MemoryBank(6, 3, generator=torch.Generator().manual_seed(2))
    f = torch.randn(2, 3, requires_grad=True)
    a.update(torch.tensor([1, 4]), f * 3)
    assert not a.bank.requires_grad
    assert not a.get(torch.tensor([1])).requires_grad
    assert not a.negatives(2, exclude=torch.tensor([1])).requires_grad
    b = MemoryBank(6, 3, generator=torch.Generator().manual_seed(3))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.bank, b.bank) and torch.equal(a.seen, b.seen)


def test_bank_input_checks():
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 2, momentum=1.0)
    bank = MemoryBank(4, 2)
    with pytest.raises(ValueError, match="indices"):
        bank.update(torch.tensor([4]), torch.randn(1, 2))
    with pytest.raises(ValueError, match="distinct"):
        bank.update(torch.tensor([1, 1]), torch.randn(2, 2))
    with pytest.raises(ValueError, match="rows"):
        bank.update(torch.tensor([1, 2]), torch.randn(3, 2))
    with pytest.raises(ValueError, match="shape"):
        bank.update(torch.tensor([1]), torch.randn(1, 3))
