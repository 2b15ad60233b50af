"""clbook.memory: the momentum (EMA) update against a hand computation."""

import pytest
import torch
from torch import nn

from clbook.memory import momentum_update


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
