"""Notebook 12: CMC's multi-view loss and CLIP's loss against independent references, the views and
captions of digits, the bag-of-words text encoder, and the "cmc" and "clip" methods."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbook.data import (CAPTION_VOCAB, DIGIT_WORDS, TEXT_VOCAB_SIZE, digit_style, digit_views, load_shipped_mnist,
                         make_captions, tokenize_text)
from clbook.encoders import BagOfWordsEncoder, MLPEncoder, ProjectionHead
from clbook.losses import clip_loss, multiview_info_nce
from clbook.losses.clip import clip_logits
from clbook.losses.multiview import view_pairs
from clbook.methods import CLIP, CMC, METHODS, make_method
from clbook.methods.cmc import split_last_dim
from clbook.training import pretrain
from conftest import REQUIRE_PEERS


def embeddings(n: int = 6, m: int = 3, d: int = 5, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=dtype)
    return [base + 0.8 * torch.randn(n, d, generator=g, dtype=dtype) for _ in range(m)]


# ----------------------------------------------------------------------------- multiview_info_nce


def loop_reference(views: list[torch.Tensor], pairing: str, t: float) -> float:
    """CMC's loss one anchor at a time, in float64 Python: sum over linked pairs of both directions' means."""
    rows = [[[float(x) for x in r] for r in v.double()] for v in views]
    unit = [[[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in view] for view in rows]
    m, n = len(views), len(views[0])
    pairs = [(0, b) for b in range(1, m)] if pairing == "core" else [(a, b) for a in range(m) for b in range(a + 1, m)]
    total = 0.0
    for a, b in pairs:
        for anchor, other in ((a, b), (b, a)):
            for i in range(n):
                logits = [sum(p * q for p, q in zip(unit[anchor][i], unit[other][k])) / t for k in range(n)]
                top = max(logits)
                lse = top + math.log(sum(math.exp(v - top) for v in logits))
                total += (lse - logits[i]) / n
    return total


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("pairing", ["core", "full"])
def test_multiview_info_nce_matches_the_loop_reference(m, pairing):
    views = embeddings(m=m)
    for t in (0.07, 0.5):
        expected = loop_reference(views, pairing, t)
        assert multiview_info_nce(views, pairing, t).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
        # The [N, M, D] form is the same batch.
        assert multiview_info_nce(torch.stack(views, 1), pairing, t).item() == pytest.approx(expected, rel=1e-6)


def test_multiview_gradient_matches_autograd_through_the_reference_in_torch():
    views = [v.clone().requires_grad_() for v in embeddings(m=3)]
    multiview_info_nce(views, "full", 0.2).backward()
    mine = [v.grad.clone() for v in views]
    refs = [v.detach().clone().requires_grad_() for v in views]
    unit = [F.normalize(v, dim=1) for v in refs]
    total = 0
    for a, b in [(0, 1), (0, 2), (1, 2)]:  # every anchor's cross-entropy, written as log-softmax
        s = unit[a] @ unit[b].T / 0.2
        total = total - torch.log_softmax(s, 1).diagonal().mean() - torch.log_softmax(s.T, 1).diagonal().mean()
    total.backward()
    for g, r in zip(mine, refs):
        torch.testing.assert_close(g, r.grad, rtol=1e-6, atol=1e-9)


def test_core_and_full_agree_for_two_views_and_count_pairs():
    views = embeddings(m=2)
    assert multiview_info_nce(views, "core", 0.1).item() == pytest.approx(multiview_info_nce(views, "full", 0.1).item())
    assert view_pairs(4, "core") == [(0, 1), (0, 2), (0, 3)]
    assert view_pairs(4, "full") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    # Unrelated views at a huge temperature: every direction is ln N, so the loss is 2 ln N per pair.
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(8, 4, generator=g) for _ in range(4)]
    assert multiview_info_nce(noise, "full", 1e6).item() == pytest.approx(6 * 2 * math.log(8), rel=1e-5)


def test_multiview_learnable_temperature_gets_a_gradient_and_inputs_are_untouched():
    views = embeddings(m=3, dtype=torch.float32)
    copies = [v.clone() for v in views]
    t = torch.tensor(0.3, requires_grad=True)
    multiview_info_nce(views, "core", t).backward()
    assert t.grad is not None and torch.isfinite(t.grad)
    assert all(torch.equal(a, b) for a, b in zip(views, copies))


def test_multiview_half_precision_is_computed_in_float32():
    views = embeddings(m=3, dtype=torch.float32)
    half = multiview_info_nce([v.half() for v in views], "full", 0.1)
    assert half.dtype == torch.float16
    assert half.float().item() == pytest.approx(multiview_info_nce([v.half().float() for v in views], "full",
                                                                   0.1).item(), rel=1e-3)


@pytest.mark.parametrize("bad, match", [
    (lambda v: [v[0]], "n_views must be an integer >= 2"),
    (lambda v: [v[0][:1], v[1][:1]], "N >= 2"),
    (lambda v: [v[0], v[1][:, :3]], "shapes must match"),
    (lambda v: [v[0], torch.full_like(v[1], float("nan"))], "NaN"),
    (lambda v: "views", "views must be a list"),
])
def test_multiview_refuses_bad_input_with_one_line(bad, match):
    with pytest.raises(ValueError, match=match):
        multiview_info_nce(bad(embeddings(m=2)), "core", 0.1)
    with pytest.raises(ValueError, match="pairing"):
        multiview_info_nce(embeddings(m=2), "star", 0.1)
    with pytest.raises(ValueError, match="temperature"):
        multiview_info_nce(embeddings(m=2), "core", 0.0)


# ----------------------------------------------------------------------------- clip_loss


def figure3_numpy(image_features: np.ndarray, text_features: np.ndarray, t: float) -> float:
    """The CLIP paper's Figure 3, transcribed to NumPy (the projections W_i, W_t are already applied).

    logits = dot(I_e, T_e.T) * exp(t); loss_i = cross_entropy(logits, labels, axis=0);
    loss_t = cross_entropy(logits, labels, axis=1); loss = (loss_i + loss_t) / 2.
    """

    def l2_normalize(x, axis):
        return x / np.linalg.norm(x, axis=axis, keepdims=True)

    def cross_entropy_loss(logits, labels, axis):
        # Softmax along `axis`; the target of slice j (taken across the other axis) is entry labels[j].
        shifted = logits - logits.max(axis=axis, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        picked = log_p[labels, np.arange(len(labels))] if axis == 0 else log_p[np.arange(len(labels)), labels]
        return -picked.mean()

    n = image_features.shape[0]
    I_e = l2_normalize(image_features, axis=1)
    T_e = l2_normalize(text_features, axis=1)
    logits = np.dot(I_e, T_e.T) * np.exp(t)
    labels = np.arange(n)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    return (loss_i + loss_t) / 2


def test_clip_loss_matches_the_papers_pseudocode():
    image, text = embeddings(n=9, m=2, d=6, seed=4)
    for t in (math.log(1 / 0.07), 0.0, math.log(100.0)):
        expected = figure3_numpy(image.numpy(), text.numpy(), t)
        assert clip_loss(image, text, math.exp(t)).item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
        # A 0-d tensor scale, as exp() of a trainable log-scale, gives the same number.
        assert clip_loss(image, text, torch.tensor(t).exp()).item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_is_half_the_two_view_cmc_loss_at_temperature_one_over_scale():
    image, text = embeddings(n=7, m=2, seed=5)
    assert clip_loss(image, text, 20.0).item() == pytest.approx(
        0.5 * multiview_info_nce([image, text], "core", 1 / 20).item(), rel=1e-9)


def test_clip_loss_gradient_reaches_the_log_scale():
    image, text = (v.float() for v in embeddings(n=8, m=2, seed=6))
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    clip_loss(image, text, log_scale.exp()).backward()
    # d/dt of the loss, by central differences in float64.
    eps, t = 1e-5, math.log(1 / 0.07)
    numeric = (figure3_numpy(image.double().numpy(), text.double().numpy(), t + eps)
               - figure3_numpy(image.double().numpy(), text.double().numpy(), t - eps)) / (2 * eps)
    assert log_scale.grad.item() == pytest.approx(numeric, rel=1e-3, abs=1e-5)


def _open_clip_loss():
    """open_clip's ClipLoss class, or (None, why not).

    open_clip's package __init__ imports its tokenizer (ftfy, regex) and model factory (timm, ...);
    the loss file needs only torch, so when the package itself does not import, its loss.py is
    loaded on its own.
    """
    try:
        from open_clip.loss import ClipLoss

        return ClipLoss, ""
    except ImportError:
        pass
    spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None, "open_clip_torch is not installed (pip install --no-deps open_clip_torch)"
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    loader = importlib.util.spec_from_file_location("_open_clip_loss_only", path)
    module = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any failure means: no peer to compare with
        return None, f"open_clip_torch's loss.py does not import here ({err})"
    return module.ClipLoss, ""


def test_clip_loss_matches_open_clip_cliploss():
    ClipLoss, why = _open_clip_loss()
    if ClipLoss is None:
        message = f"peer open_clip_torch (ClipLoss) unavailable: {why}"
        if os.environ.get(REQUIRE_PEERS, "") not in ("", "0"):  # CI installs it (.ci/run): it must not vanish
            pytest.fail(f"{message}; {REQUIRE_PEERS} is set, so a missing peer is an error", pytrace=False)
        pytest.skip(message)
    image, text = (F.normalize(v.float(), dim=1) for v in embeddings(n=16, m=2, d=8, seed=7))
    scale = torch.tensor(1 / 0.07)
    theirs = ClipLoss()(image, text, scale)
    assert clip_loss(image, text, scale).item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-6)
    a, b = image.clone().requires_grad_(), text.clone().requires_grad_()
    c, d = image.clone().requires_grad_(), text.clone().requires_grad_()
    clip_loss(a, b, scale, normalize=False).backward()
    ClipLoss()(c, d, scale).backward()
    torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.grad, d.grad, rtol=1e-5, atol=1e-7)


def test_clip_logits_and_bad_input():
    image, text = embeddings(n=4, m=2)
    logits = clip_logits(image, text[:3], 10.0)
    assert logits.shape == (4, 3) and float(logits.abs().max()) <= 10.0 + 1e-9
    with pytest.raises(ValueError, match="logit_scale"):
        clip_loss(image, text, -1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        clip_loss(image[:1], text[:1], 10.0)
    with pytest.raises(ValueError, match="shapes must match"):
        clip_loss(image, text[:3], 10.0)


# ----------------------------------------------------------------------------- views and captions of digits


def test_quadrants_and_halves_tile_the_digit_without_overlap():
    x = torch.rand(3, 1, 28, 28)
    tl, tr, bl, br = digit_views(x, "quadrants")
    assert torch.equal(torch.cat([torch.cat([tl, tr], 3), torch.cat([bl, br], 3)], 2), x)
    left, right = digit_views(x, "halves")
    assert torch.equal(torch.cat([left, right], 3), x)
    flat = digit_views(x, "quadrants", flat=True)
    assert all(f.shape == (3, 196) for f in flat) and torch.equal(flat[1], tr.flatten(1))
    tl.zero_()
    assert x.abs().sum() > 0  # copies, not views into x
    with pytest.raises(ValueError, match="parts"):
        digit_views(x, "thirds")


def test_digit_style_reads_slant_and_stroke_width():
    img = torch.zeros(3, 1, 28, 28)
    for r in range(4, 24):  # a 2-pixel stroke whose top lies to the right of its bottom
        c = 10 + (24 - r) // 3
        img[0, 0, r, c:c + 2] = 1.0
        img[1, 0, r, 27 - c - 1:27 - c + 1] = 1.0  # its mirror image: top to the left
    img[2, 0, 4:24, 10:16] = 1.0  # an upright bar, 6 pixels wide
    slant, _ = digit_style(img)
    assert slant == ["right", "left", "upright"]
    bars = torch.zeros(3, 1, 28, 28)
    for k, width in enumerate((1, 2, 6)):  # 20 rows tall: 2 * area / perimeter = 40 w / (40 + 2 w)
        bars[k, 0, 4:24, 10:10 + width] = 1.0
    assert digit_style(bars)[1] == ["thin", "regular", "thick"]


def test_captions_are_seeded_varied_and_mostly_name_the_digit():
    split = load_shipped_mnist()
    x, y = split.X_train[:400], split.y_train[:400]
    a = make_captions(x, y, seed=0, per_image=2)
    assert a == make_captions(x, y, seed=0, per_image=2) and a != make_captions(x, y, seed=1, per_image=2)
    assert len(a) == 400 and all(len(c) == 2 for c in a)
    flat = [c for pair in a for c in pair]
    assert len(set(flat)) > 300  # not a lookup table: most captions differ
    named = [any(w in (DIGIT_WORDS[label], str(label)) for w in t.replace(",", " ").replace(":", " ").split())
             for pair, label in zip(a, y.tolist()) for t in pair]
    assert 0.8 < np.mean(named) < 0.97  # wrong digits (5%) and typos (15%) take some away
    clean = make_captions(x, y, seed=0, typo=0.0, wrong_digit=0.0, filler=0.0)
    assert all(any(w in (DIGIT_WORDS[label], str(label)) for w in c[0].replace(",", " ").replace(":", " ").split())
               for c, label in zip(clean, y.tolist()))
    assert all(w in CAPTION_VOCAB for c in clean for w in c[0].replace(",", " ").replace(":", " ").split())
    with pytest.raises(ValueError, match="digits 0..9"):
        make_captions(x[:2], torch.tensor([3, 12]))


def test_tokenize_text_and_the_bag_of_words_encoder():
    ids = tokenize_text(["A handwritten SEVEN, slanted", "sevn"], length=4)
    k = {w: i + 2 for i, w in enumerate(CAPTION_VOCAB)}
    assert ids.tolist() == [[k["a"], k["handwritten"], k["seven"], k["slanted"]], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="no word"):
        tokenize_text(["..."])
    torch.manual_seed(0)
    enc = BagOfWordsEncoder(out_dim=8)
    a = tokenize_text(["the digit seven, slanted to the left"])
    b = tokenize_text(["left the to slanted seven digit the"], length=30)  # same words, other order, more padding
    torch.testing.assert_close(enc(a), enc(b))
    assert enc(a).shape == (1, 8) and enc.vocab_size == TEXT_VOCAB_SIZE
    with pytest.raises(ValueError, match="all padding"):
        enc(torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        enc(a.float())


# ----------------------------------------------------------------------------- the methods


def test_cmc_builds_one_fresh_encoder_per_view_and_its_loss_is_the_multiview_loss():
    torch.manual_seed(0)
    encoder, head = MLPEncoder(196, 16, 8), ProjectionHead(8, 8, 4)
    method = make_method("cmc", temperature=0.2, pairing="full", num_views=4,
                         split=lambda x: digit_views(x, "quadrants", flat=True))
    assert METHODS["cmc"] is CMC and isinstance(method, CMC)
    method.setup(encoder, head)
    assert len(method.encoders) == 3 and not torch.equal(method.encoders[0].net[0].weight, encoder.net[0].weight)
    x = torch.rand(6, 1, 28, 28)
    views = digit_views(x, "quadrants", flat=True)
    nets = [(encoder, head), *zip(method.encoders, method.heads)]
    expected = multiview_info_nce([h(e(v)) for (e, h), v in zip(nets, views)], "full", 0.2)
    torch.testing.assert_close(method.loss(encoder, head, [x], None, torch.arange(6)), expected)
    assert method.representation(encoder, "all")(x).shape == (6, 32)
    torch.testing.assert_close(method.representation(encoder, "core")(x), encoder(views[0]))
    with pytest.raises(ValueError, match="num_views=3"):
        CMC(num_views=3, split=lambda x: digit_views(x, "halves")).views_of(x)
    with pytest.raises(ValueError, match="view indices"):
        method.representation(encoder, [4])


def test_cmc_default_views_are_masked_parts_of_the_last_dimension():
    x = torch.arange(12.0).view(2, 6)
    left, right = split_last_dim(x, 2)
    assert torch.equal(left + right, x) and (left[:, 3:] == 0).all() and (right[:, :3] == 0).all()


def test_cmc_and_clip_train_through_pretrain():
    split = load_shipped_mnist()
    X, y = split.X_train[:128], split.y_train[:128]
    torch.manual_seed(0)
    cmc = CMC(temperature=0.1, num_views=2, split=lambda x: digit_views(x, "halves", flat=True))
    encoder = MLPEncoder(392, 16, 8)
    history = pretrain(encoder, ProjectionHead(8, 8, 4), X, method=cmc, epochs=1, batch_size=64, progress=False)
    assert history.steps == 2 and math.isfinite(history.loss[0])
    captions = tokenize_text([c for pair in make_captions(X, y, per_image=2) for c in pair]).view(128, 2, -1)
    clip = CLIP(captions, BagOfWordsEncoder(out_dim=8), scale_speed=10.0)
    encoder = MLPEncoder(784, 16, 8)
    flat = nn.Sequential(nn.Flatten(), encoder)
    history = pretrain(flat, nn.Linear(8, 4, bias=False), X, method=clip, epochs=2, batch_size=64, progress=False)
    assert history.steps == 4 and len(clip.scale_trace) == 4
    assert history.metrics["logit_scale"][-1] == pytest.approx(clip.scale_trace[-1])


def test_clip_method_loss_scale_and_zero_shot_classifier():
    torch.manual_seed(0)
    captions = tokenize_text(["a seven", "a one", "this is a two", "the digit nine"])
    clip = CLIP(captions, BagOfWordsEncoder(out_dim=6), init_temperature=0.1, max_scale=20.0, scale_speed=5.0)
    encoder, head = nn.Linear(3, 6), nn.Linear(6, 4, bias=False)
    clip.num_samples = 4
    clip.setup(encoder, head)
    assert clip.logit_scale.item() == pytest.approx(10.0)
    x, index = torch.randn(2, 3), torch.tensor([2, 0])
    expected = clip_loss(head(encoder(x)), clip.text_projection(clip.text_encoder(captions[index])), 10.0)
    loss = clip.loss(encoder, head, [x], None, index)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # The parameter is log_scale / 5: its gradient is 5 times that of the log-scale itself.
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    clip_loss(head(encoder(x)), clip.text_projection(clip.text_encoder(captions[index])), log_scale.exp()).backward()
    assert clip.scaled_log_scale.grad.item() == pytest.approx(5 * log_scale.grad.item(), rel=1e-5)
    with torch.no_grad():
        clip.scaled_log_scale.fill_(10.0)
    clip.after_step(encoder, head, 0, 1)
    assert clip.logit_scale.item() == pytest.approx(20.0)  # clipped at max_scale, as CLIP clips at 100
    classes = clip.zero_shot_classifier([tokenize_text(["a seven", "the digit 7"]), tokenize_text(["a one"])])
    assert classes.shape == (2, 4) and torch.allclose(classes.norm(dim=1), torch.ones(2))
    clip.num_samples = 5
    with pytest.raises(ValueError, match="one row of captions per training sample"):
        clip.setup(encoder, head)
    with pytest.raises(ValueError, match="int64 word ids"):
        CLIP(captions.float())
