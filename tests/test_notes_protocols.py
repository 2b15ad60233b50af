"""The lecture notes' encoders and protocols (notebooks 04 and 05), against independent references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from clbook.data import Split, load_shipped_mnist
from clbook.encoders import ENCODERS, NotesCNN, NotesMLP, make_encoder
from clbook.evaluation import evaluate_frozen
from clbook.notes import (NOTES_LOSS, NOTES_MNIST, HeadTrace, notes_linear_head, notes_linear_head_many,
                          notes_mnist_inputs, notes_pretrain, notes_pretrain_history, notes_pretrain_many,
                          run_notes_mnist)
from clbook.reference import supcontrast_loss


def blobs(n=120, d=6, classes=3, spread=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * spread
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


# ----------------------------------------------------------------------------- encoders


def test_notes_encoders_registered_and_seeded():
    assert ENCODERS["notes-mlp"] is NotesMLP and ENCODERS["notes-cnn"] is NotesCNN
    for kind in ("notes-mlp", "notes-cnn"):
        a, b = make_encoder(kind, seed=3), make_encoder(kind, seed=3)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_notes_mlp_is_linear_tanh_linear():
    enc = make_encoder("notes-mlp", seed=0)
    x = torch.randn(7, 4)
    first, last = enc.net[0], enc.net[2]
    expected = torch.tanh(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    assert enc(x).shape == (7, 6)
    assert torch.allclose(enc(x), expected, atol=1e-6)
    assert sum(p.numel() for p in enc.parameters()) == 4 * 10 + 10 + 10 * 6 + 6


def test_notes_cnn_matches_functional_form_and_is_non_negative():
    enc = make_encoder("notes-cnn", seed=1).eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    conv1, conv2 = enc.features[0], enc.features[3]
    h = F.max_pool2d(F.relu(F.conv2d(x, conv1.weight.contiguous(), conv1.bias, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, conv2.weight.contiguous(), conv2.bias, padding=1)), 2)
    expected = F.relu(F.linear(h.reshape(5, -1), enc.fc.weight, enc.fc.bias))
    with torch.no_grad():
        out = enc(x)
    assert out.shape == (5, 128) and (out >= 0).all()
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("enc, bad", [(NotesMLP(), torch.randn(3, 5)), (NotesCNN(), torch.rand(3, 28, 28))])
def test_notes_encoders_check_input(enc, bad):
    with pytest.raises(ValueError, match="expects input of shape"):
        enc(bad)


# ----------------------------------------------------------------------------- notes_pretrain


@pytest.mark.parametrize("normalize, base", [(False, 1.0), (True, None)])
def test_notes_pretrain_one_full_batch_step_is_plain_sgd_on_the_reference_loss(normalize, base):
    X, y = blobs(n=12)
    enc = make_encoder("notes-mlp", in_dim=6, seed=0)
    ref = make_encoder("notes-mlp", in_dim=6, seed=0)
    notes_pretrain(enc, X, y, epochs=1, batch_size=12, lr=0.5, temperature=0.3, seed=0, normalize=normalize,
                   base_temperature=base)
    # Independent step: the SupContrast reference algorithm (every class has >= 2 samples, so
    # its mean over all anchors is clbook's), then p <- p - lr * grad by hand. The notes' loss:
    # raw outputs, times the temperature (base 1); the course's: normalized, no factor.
    z = F.normalize(ref(X), dim=1) if normalize else ref(X)
    loss = supcontrast_loss(z[:, None, :], y, temperature=0.3, base_temperature=0.3 if base is None else base)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, p0, g in zip(enc.parameters(), ref.parameters(), grads):
        assert torch.allclose(p, p0 - 0.5 * g, atol=1e-5)
    assert not enc.training


def test_the_default_loss_is_the_notes_loss():
    X, y = blobs(n=24)
    a, b = make_encoder("notes-mlp", in_dim=6, seed=1), make_encoder("notes-mlp", in_dim=6, seed=1)
    default = notes_pretrain(a, X, y, epochs=2, batch_size=8, lr=0.3, temperature=0.5)
    explicit = notes_pretrain(b, X, y, epochs=2, batch_size=8, lr=0.3, temperature=0.5, **NOTES_LOSS)
    assert default == explicit and NOTES_LOSS == {"normalize": False, "base_temperature": 1.0}


def test_history_records_the_feature_norm_the_loss_saw():
    X, y = blobs(n=30)
    enc = make_encoder("notes-mlp", in_dim=6, seed=2)
    with torch.no_grad():
        start_norm = enc(X).norm(dim=1).mean().item()
    # One batch per epoch: epoch 1's norm is the untrained encoder's, epoch 2's that after one step.
    hist = notes_pretrain_history(enc, X, y, epochs=3, batch_size=30, lr=0.5, temperature=0.1, seed=0)
    assert hist.feature_norm[0] == pytest.approx(start_norm, rel=1e-6)
    assert len(hist.loss) == len(hist.feature_norm) == 3
    assert (hist.steps, hist.samples) == (3, 90) and hist.seconds > 0
    with torch.no_grad():
        assert hist.feature_norm[-1] != pytest.approx(enc(X).norm(dim=1).mean().item(), rel=1e-6)  # before step 3


def test_notes_pretrain_keeps_the_last_small_batch_and_learns():
    X, y = blobs(n=40, spread=1.0)
    sizes = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_encoder("notes-mlp", in_dim=6, seed=0)

        def forward(self, x):
            sizes.append(x.shape[0])
            return self.inner(x)

    enc = Recording()
    losses = notes_pretrain(enc, X, y, epochs=30, batch_size=16, lr=0.5, temperature=0.1, seed=0)
    assert sizes[:3] == [16, 16, 8] and len(sizes) == 3 * 30  # a DataLoader without drop_last
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_notes_pretrain_checks_arguments():
    X, y = blobs(n=20)
    enc = make_encoder("notes-mlp", in_dim=6, seed=0)
    with pytest.raises(ValueError, match="y must have shape"):
        notes_pretrain(enc, X, y[:5], epochs=1, batch_size=4, lr=0.1, temperature=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        notes_pretrain(enc, X, y, epochs=1, batch_size=0, lr=0.1, temperature=0.1)
    with pytest.raises(ValueError, match="lr"):
        notes_pretrain(enc, X, y, epochs=1, batch_size=4, lr=0.0, temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        notes_pretrain(enc, X, y, epochs=1, batch_size=4, lr=0.1, temperature=-1.0)
    with pytest.raises(ValueError, match="base_temperature"):
        notes_pretrain(enc, X, y, epochs=1, batch_size=4, lr=0.1, temperature=0.1, base_temperature=0.0)
    with pytest.raises(ValueError, match="normalize"):
        notes_pretrain(enc, X, y, epochs=1, batch_size=4, lr=0.1, temperature=0.1, normalize="no")


# ----------------------------------------------------------------------------- notes_linear_head


def test_notes_head_scores_after_every_few_steps_and_at_the_end():
    X, y = blobs(n=105)
    trace = notes_linear_head(X, y, {"train": (X, y)}, epochs=1, batch_size=16, score_every=2)
    assert trace.steps == [2, 4, 6, 7]  # 105 = 6 * 16 + 9: seven steps, the last one scored too
    with torch.no_grad():
        final = (trace.head(X).argmax(1) == y).float().mean().item()
    assert trace.final("train") == final


def test_notes_head_first_full_batch_adam_step_moves_every_weight_by_lr():
    # Adam's first update is lr * m / (sqrt(v) + eps) = lr * sign(grad), whatever the feature scale.
    X, y = blobs(n=30)
    X = X * 100.0  # unnormalized features are used as they come
    trace = notes_linear_head(X, y, {}, epochs=1, batch_size=30, lr=0.1, seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        start = nn.Linear(6, 3)
    grad_w, grad_b = torch.autograd.grad(F.cross_entropy(start(X), y), [start.weight, start.bias])
    assert torch.allclose(trace.head.weight, start.weight - 0.1 * grad_w.sign(), atol=1e-5)
    assert torch.allclose(trace.head.bias, start.bias - 0.1 * grad_b.sign(), atol=1e-5)


def test_notes_head_trained_long_matches_logistic_regression():
    X, y = blobs(n=300, spread=1.0, seed=2)
    X_test, y_test = X[200:], y[200:]
    trace = notes_linear_head(X[:200], y[:200], {"test": (X_test, y_test)}, epochs=60, lr=0.02, score_every=13)
    sk = LogisticRegression(max_iter=2000).fit(X[:200].numpy(), y[:200].numpy())
    assert abs(trace.final("test") - sk.score(X_test.numpy(), y_test.numpy())) <= 0.03


def test_head_trace_selection_rules():
    trace = HeadTrace([1, 2, 3], {"val": [0.5, 0.9, 0.9], "test": [0.8, 0.6, 0.7]}, nn.Linear(1, 1))
    assert trace.best("test") == 0.8  # the notes' rule: the best test score over all steps
    assert trace.chosen_on("val", "test") == 0.6  # the first step with the best validation score
    assert trace.final("test") == 0.7


def test_notes_head_checks_arguments():
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match="train_feats"):
        notes_linear_head(X, y[:3], {})
    with pytest.raises(ValueError, match="score"):
        notes_linear_head(X, y, {"test": (X[:, :2], y)})
    with pytest.raises(ValueError, match="score_every"):
        notes_linear_head(X, y, {}, score_every=0)
    assert np.isfinite(notes_linear_head(X, y, {"t": (X, y)}).final("t"))


# ----------------------------------------------------------------------------- notes_pretrain_many


def test_notes_pretrain_many_equals_separate_runs():
    runs = [blobs(n=40, d=4, spread=1.0, seed=s) for s in range(4)]
    X, y = torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs])
    # Each run its own loss: the notes' at two temperatures, the course's cosine at two.
    temps, norms, bases = [0.1, 10.0, 0.1, 10.0], [False, False, True, True], [1.0, 1.0, None, None]
    together = [make_encoder("notes-mlp", seed=s) for s in range(4)]
    hists = notes_pretrain_many(together, X, y, epochs=4, batch_size=16, lr=0.5, temperature=temps, seeds=[0, 1, 2, 3],
                                normalize=norms, base_temperature=bases)
    for s in range(4):
        alone = make_encoder("notes-mlp", seed=s)
        expected = notes_pretrain_history(alone, X[s], y[s], epochs=4, batch_size=16, lr=0.5, temperature=temps[s],
                                          normalize=norms[s], base_temperature=bases[s], seed=s)
        assert np.allclose(hists[s].loss, expected.loss, atol=1e-4)
        assert np.allclose(hists[s].feature_norm, expected.feature_norm, atol=1e-4)
        assert (hists[s].steps, hists[s].samples) == (expected.steps, expected.samples) == (12, 160)
        for p, q in zip(together[s].parameters(), alone.parameters()):
            assert torch.allclose(p, q, atol=1e-4)
        assert not together[s].training


def test_notes_pretrain_many_checks_arguments():
    X, y = blobs(n=20, d=4)
    encs = [make_encoder("notes-mlp", seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="as many"):
        notes_pretrain_many(encs, X[None], y[None], epochs=1, batch_size=4, lr=0.1, temperature=0.1, seeds=[0, 1])
    with pytest.raises(ValueError, match="temperature"):
        notes_pretrain_many(encs, torch.stack([X, X]), torch.stack([y, y]), epochs=1, batch_size=4, lr=0.1,
                            temperature=0.0, seeds=[0, 1])
    with pytest.raises(ValueError, match="one value per run"):
        notes_pretrain_many(encs, torch.stack([X, X]), torch.stack([y, y]), epochs=1, batch_size=4, lr=0.1,
                            temperature=[0.1, 0.2, 0.3], seeds=[0, 1])


# ----------------------------------------------------------------------------- run_notes_mnist


@pytest.fixture(scope="module")
def small_mnist():
    full = load_shipped_mnist()
    return Split(full.X_train[:600], full.y_train[:600], full.X_test[:200], full.y_test[:200], full.source,
                 full.classes)


def test_notes_inputs_are_scaled_to_minus_one_one_without_touching_the_caller():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :3] = torch.tensor([0.0, 0.25, 1.0])
    before = x.clone()
    scaled = notes_mnist_inputs(x)
    assert torch.equal(scaled[0, 0, 0, :3], torch.tensor([-1.0, -0.5, 1.0]))  # Normalize((0.5,), (0.5,))
    assert torch.allclose(scaled, (x - 0.5) / 0.5) and torch.equal(x, before)
    assert torch.equal(notes_mnist_inputs(torch.tensor([[0, 255]], dtype=torch.uint8)), torch.tensor([[-1.0, 1.0]]))


def test_run_notes_mnist_is_the_notes_protocol(small_mnist):
    split = small_mnist
    out = run_notes_mnist(split, epochs=2, seed=3, device="cpu")
    n = len(split.y_train)
    assert out["steps"] == 2 * -(-n // NOTES_MNIST["batch_size"]) and out["samples"] == 2 * n
    assert len(out["loss"]) == len(out["feature_norm"]) == 2
    assert out["settings"]["temperature"] == 10.0 and out["settings"]["base_temperature"] == 1.0
    assert not out["settings"]["normalize"] and out["data"] == split.source

    # The random twin, recomputed independently: the notes' CNN with this seed on [-1, 1] images.
    twin = make_encoder("notes-cnn", seed=3).eval()
    with torch.no_grad():
        f_train, f_test = twin(split.X_train * 2 - 1), twin(split.X_test * 2 - 1)
    head = notes_linear_head(f_train, split.y_train, {"test": (f_test, split.y_test)}, epochs=4, batch_size=256,
                             lr=0.1, seed=3)
    course = evaluate_frozen(f_train, split.y_train, f_test, split.y_test, seed=3, device="cpu")
    r = out["random"]
    assert r["head_epochs"] == 4 and out["supcon"]["head_epochs"] == 2
    assert r["notes_head_acc"] == head.final("test")
    assert (r["linear_acc"], r["knn_acc"]) == (course["linear_acc"], course["knn_acc"])
    assert r["feature_norm"] == pytest.approx(f_train.norm(dim=1).mean().item(), rel=1e-5)
    for name in ("supcon", "random"):
        assert all(0.0 <= out[name][key] <= 1.0 for key in ("notes_head_acc", "linear_acc", "knn_acc"))


def test_run_notes_mnist_checks_arguments(small_mnist):
    with pytest.raises(ValueError, match="epochs"):
        run_notes_mnist(small_mnist, epochs=0)
    with pytest.raises(ValueError, match="base_temperature"):
        run_notes_mnist(small_mnist, epochs=1, base_temperature=-1.0, device="cpu")


# ----------------------------------------------------------------------------- batched heads, divergence


def test_notes_linear_head_many_equals_separate_heads():
    runs = [blobs(n=45, d=6, seed=s) for s in range(3)]
    X, y = torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs])
    X_test, y_test = X[:, :20] + 0.3, y[:, :20]
    many = notes_linear_head_many(X, y, {"test": (X_test, y_test)}, seeds=[4, 5, 6], epochs=5, batch_size=16,
                                  lr=0.1, score_every=2)
    for s in range(3):
        alone = notes_linear_head(X[s], y[s], {"test": (X_test[s], y_test[s])}, epochs=5, batch_size=16, lr=0.1,
                                  score_every=2, seed=4 + s)
        assert many[s].steps == alone.steps == [2, 4, 6, 8, 10, 12, 14, 15]
        assert np.allclose(many[s].acc["test"], alone.acc["test"])
        assert torch.allclose(many[s].head.weight, alone.head.weight, atol=1e-5)
        assert torch.allclose(many[s].head.bias, alone.head.bias, atol=1e-5)


def test_notes_linear_head_many_checks_arguments():
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match="train_feats"):
        notes_linear_head_many(X, y, {}, seeds=[0])
    with pytest.raises(ValueError, match="one seed per head"):
        notes_linear_head_many(X[None], y[None], {}, seeds=[0, 1])
    with pytest.raises(ValueError, match="score"):
        notes_linear_head_many(X[None], y[None], {"t": (X, y)}, seeds=[0])


def test_a_diverging_run_is_a_floating_point_error_naming_the_epoch():
    # The notes' loss at tau = 10 and lr 1 on Iris-sized blobs: nothing holds the feature length back.
    X, y = blobs(n=60, d=4, spread=1.0)
    with pytest.raises(FloatingPointError, match="in epoch [0-9]+.*lower lr"):
        notes_pretrain(make_encoder("notes-mlp", seed=0), X, y, epochs=200, batch_size=16, lr=1.0, temperature=10.0)
