"""Tiled losses (issue 18): block_size= gives the untiled path's value and gradient.

Each case is compared with the untiled path of the same function and with a dense float64
reference differentiated by autograd (written here, independent of clbook's bookkeeping): to 1e-10
in float64 and 1e-5 in float32, for block sizes that divide the rows, that do not, of one row and
larger than the batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbook.losses import _tiled, supcon
from clbook.losses import nt_xent as nt_xent_module
from clbook.losses import InfoNCELoss, NTXentLoss, SupConLoss, info_nce_loss, nt_xent_loss, supcon_loss

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
BLOCKS = [1, 3, 4, 1000]


def dense_softmax_loss(z: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a positive of -mean_p log softmax_p, diagonal excluded; rows ``z`` already scaled."""
    eye = torch.eye(len(z), dtype=torch.bool)
    log_prob = F.log_softmax((z @ z.T).masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    positive = positive & ~eye
    count = positive.sum(dim=1)
    per_anchor = -(log_prob * positive).sum(dim=1) / count.clamp_min(1)
    if not bool((count > 0).any()):  # no anchor: clbook returns a zero connected to the input
        return 0.0 * z.sum()
    return per_anchor[count > 0].mean()


def reference_supcon(features, labels, mask, t, normalize):
    """L_out on sample-major rows through a dense [M, M] positive mask, in float64."""
    f = features.double()
    v = f.shape[1] if f.dim() == 3 else 1
    n = f.shape[0]
    z = f.reshape(n * v, -1)
    z = (F.normalize(z, dim=1) if normalize else z) / t**0.5
    sample = torch.arange(n).repeat_interleave(v)
    if mask is not None:
        positive = mask.bool()[sample][:, sample]
    elif labels is not None:
        positive = labels[sample][:, None] == labels[sample][None, :]
    else:
        positive = sample[:, None] == sample[None, :]
    return dense_softmax_loss(z, positive)


def grads(loss_fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    return loss.detach(), torch.autograd.grad(loss, leaves)


def assert_close(a, b, tol):
    (va, ga), (vb, gb) = a, b
    assert abs(va.item() - vb.item()) <= tol * max(1.0, abs(vb.item()))
    for x, y in zip(ga, gb):
        assert (x.double() - y.double()).abs().max().item() <= tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block", BLOCKS)
def test_nt_xent_tiled_matches_untiled_and_dense(dtype, block):
    g = torch.Generator().manual_seed(block)
    z1, z2 = (torch.randn(7, 5, generator=g, dtype=dtype) for _ in range(2))
    untiled = grads(lambda a, b: nt_xent_loss(a, b, 0.3), z1, z2)
    tiled = grads(lambda a, b: nt_xent_loss(a, b, 0.3, block_size=block), z1, z2)
    assert_close(tiled, untiled, TOL[dtype])
    n = len(z1)
    target = torch.arange(2 * n).roll(n)

    def dense(a, b):
        z = F.normalize(torch.cat([a, b]).double(), dim=1) / 0.3**0.5
        return dense_softmax_loss(z, target[:, None] == torch.arange(2 * n)[None, :])

    assert_close(tiled, grads(dense, z1, z2), TOL[dtype])


CASES = ["labels", "float labels", "no labels", "mask", "mask with empty rows", "singletons"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("case", CASES)
def test_supcon_tiled_matches_untiled_and_dense(dtype, views, case):
    g = torch.Generator().manual_seed(views)
    n = 9
    features = torch.randn(n, views, 4, generator=g, dtype=dtype)
    if views == 1:
        features = features[:, 0]
    labels = mask = None
    if case == "labels":
        labels = torch.randint(3, (n,), generator=g)
    elif case == "float labels":
        labels = torch.randint(3, (n,), generator=g).double() * 2.5 - 1
    elif case == "mask":
        mask = torch.rand(n, n, generator=g) < 0.4
    elif case == "mask with empty rows":
        mask = (torch.rand(n, n, generator=g) < 0.4).float()
        mask[:3] = 0
    elif case == "singletons":  # classes of one sample: with one view those rows have no positive
        labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    for normalize in (True, False):
        def loss(f, **kw):
            return supcon_loss(f, labels, mask, temperature=0.2, normalize=normalize, **kw)

        untiled = grads(loss, features)
        ref = grads(lambda f: reference_supcon(f, labels, mask, 0.2, normalize), features)
        for block in BLOCKS:
            tiled = grads(lambda f: loss(f, block_size=block), features)
            assert_close(tiled, untiled, TOL[dtype])
            assert_close(tiled, ref, TOL[dtype])


def reference_info_nce(q, k, neg, t):
    q, k = F.normalize(q.double(), dim=1) / t, F.normalize(k.double(), dim=1)
    if neg is None:
        return F.cross_entropy(q @ k.T, torch.arange(len(q)))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ F.normalize(neg.double(), dim=1).T], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("queue", [True, False], ids=["queue", "in-batch"])
def test_info_nce_tiled_matches_untiled_and_dense(dtype, queue):
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(8, 5, generator=g, dtype=dtype) for _ in range(2))
    neg = torch.randn(11, 5, generator=g, dtype=dtype) if queue else None
    untiled = grads(lambda a, b: info_nce_loss(a, b, neg, 0.2), q, k)
    ref = grads(lambda a, b: reference_info_nce(a, b, neg, 0.2), q, k)
    for block in BLOCKS:
        tiled = grads(lambda a, b: info_nce_loss(a, b, neg, 0.2, block_size=block), q, k)
        assert_close(tiled, untiled, TOL[dtype])
        assert_close(tiled, ref, TOL[dtype])


def test_gradcheck_tiled():
    g = torch.Generator().manual_seed(5)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    a, b = leaf(5, 3), leaf(5, 3)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.4, block_size=3), (a, b))
    features = leaf(6, 2, 3)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, block_size=5), (features,))
    mask = torch.rand(6, 6, generator=g) < 0.5
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, mask=mask, block_size=4), (features,))
    neg = leaf(4, 3).detach()
    assert torch.autograd.gradcheck(lambda q, k: info_nce_loss(q, k, neg, 0.5, block_size=2), (a, b))
    assert torch.autograd.gradcheck(lambda q, k: info_nce_loss(q, k, None, 0.5, block_size=2), (a, b))


def test_learnable_temperature_gets_the_same_gradient():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    out = []
    for block in (None, 4):
        t = torch.tensor(0.3, requires_grad=True)
        nt_xent_loss(z1, z2, t, block_size=block).backward()
        out.append(t.grad.item())
    assert out[0] == pytest.approx(out[1], abs=1e-5)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_tiled_is_computed_in_float32(half):
    g = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randn(6, 4, generator=g).to(half) for _ in range(2))
    tiled = nt_xent_loss(z1, z2, 0.1, block_size=4)
    assert tiled.dtype == half
    assert tiled.float().item() == pytest.approx(nt_xent_loss(z1.float(), z2.float(), 0.1).item(), rel=1e-2)
    features = torch.randn(6, 2, 4, generator=g).to(half)
    out = supcon_loss(features, torch.tensor([0, 1, 0, 1, 2, 2]), block_size=5)
    assert out.dtype == half and torch.isfinite(out)


def test_automatic_choice_tiles_only_large_batches(monkeypatch):
    calls = []
    original = _tiled._SelfLSE.apply
    monkeypatch.setattr(_tiled._SelfLSE, "apply", lambda *a: calls.append(a[2]) or original(*a))
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    untiled = nt_xent_loss(z1, z2)
    assert calls == []  # 20 rows: one [20, 20] matrix
    monkeypatch.setattr(_tiled, "_UNTILED_MAX_LOGITS", 100)
    monkeypatch.setattr(_tiled, "_TILE_LOGITS", 7 * 20)
    tiled = nt_xent_loss(z1, z2)
    assert calls == [32]  # never fewer than 32 rows per block
    assert tiled.item() == pytest.approx(untiled.item(), abs=1e-6)
    monkeypatch.setattr(_tiled, "_TILE_LOGITS", 1 << 23)
    assert _tiled._auto_block(100, 100, None) == 32 and _tiled._auto_block(10, 10**6, None) == 32
    assert _tiled._auto_block(8192, 8192, None) == 1024 and _tiled._auto_block(32768, 32768, None) == 256
    assert _tiled._auto_block(4096, 4096, None) == 1024 and _tiled._auto_block(2050, 2050, None) == 513  # at least 4 blocks
    assert _tiled._auto_block(10, 10, 3) == 3  # an explicit block size always tiles


def graph_nodes(loss: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``loss``: which path computed it."""
    seen, todo, names = set(), [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(fn for fn, _ in node.next_functions)
    return names


def test_the_private_names_that_tests_patch_are_the_ones_the_losses_read(monkeypatch):
    # Tests and the benchmark patch module attributes (thresholds, helpers). After a move, a patch of
    # a copy the code no longer reads would make them pass vacuously: here each patch must change
    # what runs.
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=g, requires_grad=True), torch.randn(6, 4, generator=g)
    features, labels = torch.randn(6, 2, 4, generator=g, requires_grad=True), torch.tensor([0, 1, 0, 1, 2, 2])

    def paths() -> list[set[str]]:
        return [graph_nodes(nt_xent_loss(z1, z2)), graph_nodes(supcon_loss(features, labels)),
                graph_nodes(info_nce_loss(z1, z2)), graph_nodes(info_nce_loss(z1, z2, z2.flip(0)))]

    # _tiled._UNTILED_MAX_LOGITS decides for every softmax loss, read at call time.
    plain = paths()
    assert not any({"_SelfLSEBackward", "_CrossLSEBackward"} & nodes for nodes in plain)
    assert "_SupConOutBackward" in plain[1]
    monkeypatch.setattr(_tiled, "_UNTILED_MAX_LOGITS", 0)
    tiled = paths()
    assert "_SelfLSEBackward" in tiled[0] and "_SelfLSEBackward" in tiled[1] and "_SupConOutBackward" not in tiled[1]
    assert "_CrossLSEBackward" in tiled[2] and "_CrossLSEBackward" in tiled[3]
    # _tiled._TILE_LOGITS sets the block size.
    assert _tiled._auto_block(8192, 8192, None) == 1024
    monkeypatch.setattr(_tiled, "_TILE_LOGITS", 1 << 20)
    assert _tiled._auto_block(8192, 8192, None) == 128
    monkeypatch.undo()
    # supcon._ONE_PRODUCT_MAX_ROWS chooses _SupConOut's backward (its node is its ctx).
    assert supcon_loss(features, labels).grad_fn.symmetric  # 12 rows: P + P^T, one product
    monkeypatch.setattr(supcon, "_ONE_PRODUCT_MAX_ROWS", 0)
    assert not supcon_loss(features, labels).grad_fn.symmetric
    # _masked_logits as nt_xent.py and supcon.py read it (each through its own module's global).
    for module in (nt_xent_module, supcon):
        calls = []
        monkeypatch.setattr(module, "_masked_logits", lambda rows, f=module._masked_logits: calls.append(1) or f(rows))
        nt_xent_loss(z1, z2) if module is nt_xent_module else supcon_loss(features, labels, variant="in")
        assert calls, module.__name__


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_bad_block_size_raises(bad):
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="block_size"):
        nt_xent_loss(z, z + 1, block_size=bad)
    with pytest.raises(ValueError, match="block_size"):
        supcon_loss(z, block_size=bad)
    with pytest.raises(ValueError, match="block_size"):
        info_nce_loss(z, z + 1, block_size=bad)
    with pytest.raises(ValueError, match="block_size"):
        NTXentLoss(block_size=bad)


def test_l_in_refuses_tiling():
    with pytest.raises(ValueError, match='variant="out"'):
        supcon_loss(torch.randn(4, 3), variant="in", block_size=2)
    with pytest.raises(ValueError, match='variant="out"'):
        SupConLoss(variant="in", block_size=2)


def test_tiled_has_no_second_derivatives_but_backward_twice_works():
    z1 = torch.randn(5, 3, requires_grad=True)
    z2 = torch.randn(5, 3)
    loss = nt_xent_loss(z1, z2, block_size=2)
    (first,) = torch.autograd.grad(loss, z1, retain_graph=True)
    (second,) = torch.autograd.grad(loss, z1, retain_graph=True)
    assert torch.equal(first, second)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(loss, z1, create_graph=True)


def test_modules_pass_block_size_and_inputs_are_unchanged():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    before = z1.clone(), z2.clone()
    assert NTXentLoss(0.5, block_size=3)(z1, z2).item() == pytest.approx(nt_xent_loss(z1, z2).item(), abs=1e-6)
    features, labels = torch.randn(6, 2, 4, generator=g), torch.tensor([0, 1, 0, 1, 2, 2])
    assert SupConLoss(block_size=5)(features, labels).item() == pytest.approx(
        supcon_loss(features, labels).item(), abs=1e-6)
    assert InfoNCELoss(block_size=2)(z1, z2).item() == pytest.approx(info_nce_loss(z1, z2).item(), abs=1e-6)
    assert torch.equal(z1, before[0]) and torch.equal(z2, before[1])


def test_without_torch_distributed_gather_is_a_no_op():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert nt_xent_loss(z1, z2, gather_distributed=True).item() == nt_xent_loss(z1, z2).item()
    assert supcon_loss(z1, gather_distributed=True).item() == supcon_loss(z1).item()
