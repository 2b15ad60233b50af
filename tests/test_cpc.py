"""CPC: the loss against a plain loop, its gradients and refusals; the encoder and predictor; the method."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from clbook.data import make_speech_sequences
from clbook.encoders import CPCEncoder, CPCPredictor, make_encoder
from clbook.losses import CPCLoss, cpc_logits, cpc_loss, info_nce_loss
from clbook.methods import CPC, METHODS, REGISTRY, make_method
from clbook.training import pretrain, train_step


def loop_reference(predictions, latents, temperature=1.0, normalize=False, negatives="batch", exclude=0,
                   chosen=None):
    """CPC's loss written out: for every step k, every sequence b and time t with t + k < T, one softmax term.

    The candidates of anchor (b, t) at step k are the latents z[c, s], k <= s < T, of the sequences c
    that ``negatives`` names ("batch": all, "sequence": b, "other": all but b, plus the positive),
    less those of sequence b within ``exclude`` steps of the positive; or, if ``chosen`` is given,
    the positive and the negatives ``chosen[k][(b, t)]``, a list of (c, s) pairs.
    Returns the K per-step losses (float64), each the mean of -log p(positive) over its anchors.
    """
    p, z = predictions.double(), latents.double()
    if normalize:
        p, z = F.normalize(p, dim=-1), F.normalize(z, dim=-1)
    B, T, K, _ = p.shape
    losses = []
    for k in range(1, K + 1):
        terms = []
        for b in range(B):
            for t in range(T - k):
                if chosen is not None:
                    pairs = [(b, t + k)] + list(chosen[k][b, t])
                else:
                    others = {"batch": range(B), "sequence": [b], "other": range(B)}[negatives]
                    pairs = [(c, s) for c in others for s in range(k, T)
                             if c != b or s == t + k or (negatives != "other" and abs(s - (t + k)) > exclude)]
                scores = torch.stack([p[b, t, k - 1] @ z[c, s] for c, s in pairs]) / temperature
                positive = p[b, t, k - 1] @ z[b, t + k] / temperature
                terms.append(torch.logsumexp(scores, 0) - positive)
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses)


def inputs(B=3, T=7, K=3, D=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, K, D, generator=g, dtype=dtype), torch.randn(B, T, D, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
@pytest.mark.parametrize("temperature, normalize", [(1.0, False), (0.3, False), (0.1, True)])
def test_cpc_loss_matches_the_loop_reference(negatives, temperature, normalize):
    p, z = inputs()
    expected = loop_reference(p, z, temperature, normalize, negatives)
    per_step = cpc_loss(p, z, temperature, normalize, negatives=negatives, per_step=True)
    assert per_step.shape == (3,) and per_step.dtype == torch.float64
    assert (per_step - expected).abs().max().item() <= 1e-6
    assert abs(cpc_loss(p, z, temperature, normalize, negatives=negatives).item() - expected.mean().item()) <= 1e-6
    module = CPCLoss(temperature, normalize, negatives=negatives)
    assert abs(module(p, z).item() - expected.mean().item()) <= 1e-6


@pytest.mark.parametrize("negatives, exclude", [("other", 0), ("batch", 1), ("sequence", 1), ("sequence", 2),
                                                ("batch", 5)])
@pytest.mark.parametrize("temperature, normalize", [(1.0, False), (0.1, True)])
def test_other_sequences_and_excluded_neighbours_match_the_loop_reference(negatives, exclude, temperature, normalize):
    p, z = inputs(B=3, T=9, K=3)
    expected = loop_reference(p, z, temperature, normalize, negatives, exclude)
    per_step = cpc_loss(p, z, temperature, normalize, negatives=negatives, exclude=exclude, per_step=True)
    assert (per_step - expected).abs().max().item() <= 1e-6
    module = CPCLoss(temperature, normalize, negatives=negatives, exclude=exclude)
    assert abs(module(p, z).item() - expected.mean().item()) <= 1e-6
    for k in (1, 2, 3):  # the logits' dropped candidates score -inf, and the positive never is one of them
        logits, target = cpc_logits(p, z, k, temperature, normalize, negatives=negatives, exclude=exclude)
        assert abs(F.cross_entropy(logits, target).item() - expected[k - 1].item()) <= 1e-6
        assert torch.isfinite(logits.gather(1, target[:, None])).all()


def _coded(B, T, K):
    """Inputs whose every score names its candidate: prediction 1, latent z[c, s] = 1 + c T + s (D = 1)."""
    code = 1.0 + torch.arange(B * T, dtype=torch.float64).reshape(B, T, 1)
    return torch.ones(B, T, K, 1, dtype=torch.float64), code


@pytest.mark.parametrize("negatives, exclude, num_negatives", [("other", 0, [5, 4, 3]), ("batch", 0, 6),
                                                               ("sequence", 1, 2), ("batch", 2, [9, 7, 40])])
def test_drawn_negatives_are_allowed_and_give_the_loop_reference_on_those_draws(negatives, exclude, num_negatives):
    B, T, K = 3, 8, 3
    ones, code = _coded(B, T, K)
    chosen = {}
    g = torch.Generator().manual_seed(7)
    for k in range(1, K + 1):
        n = num_negatives[k - 1] if isinstance(num_negatives, list) else num_negatives
        logits, target = cpc_logits(ones, code, k, negatives=negatives, exclude=exclude, num_negatives=num_negatives,
                                    generator=g)
        assert logits.shape == (B * (T - k), n + 1) and (target == 0).all()
        chosen[k] = {}
        for row, scores in enumerate(logits.long().tolist()):
            b, t = divmod(row, T - k)
            assert scores[0] == 1 + b * T + t + k  # the positive first
            pairs = [divmod(v - 1, T) for v in scores[1:]]
            for c, s in pairs:
                assert k <= s < T and (c, s) != (b, t + k)  # a target of step k, not the positive
                assert c != b or (negatives != "other" and abs(s - (t + k)) > exclude)
                assert negatives != "sequence" or c == b
            chosen[k][b, t] = pairs
    # The draws depend on the shapes and the generator only: the same seed draws the same negatives for real inputs.
    p, z = inputs(B=B, T=T, K=K, D=4, seed=8)
    got = cpc_loss(p, z, 0.5, negatives=negatives, exclude=exclude, num_negatives=num_negatives,
                   generator=torch.Generator().manual_seed(7), per_step=True)
    expected = loop_reference(p, z, 0.5, chosen=chosen)
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("negatives, exclude", [("other", 0), ("sequence", 1)])
def test_every_allowed_negative_is_drawn_equally_often(negatives, exclude):
    B, T, draws, n = 2, 7, 1000, 3
    ones, code = _coded(B, T, 1)
    logits, _ = cpc_logits(ones, code, 1, negatives=negatives, exclude=exclude)  # every anchor's candidates
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros_like(logits)
    for _ in range(draws):
        drawn, _ = cpc_logits(ones, code, 1, negatives=negatives, exclude=exclude, num_negatives=n, generator=g)
        counts += (drawn[:, 1:, None] == logits[:, None, :]).sum(dim=1)  # how often each candidate was drawn
    positive = logits == code[:, 1:].reshape(-1, 1)
    allowed = torch.isfinite(logits) & ~positive
    share = counts / (draws * n)
    expected = 1 / allowed.sum(dim=1, keepdim=True)
    assert (counts[~allowed] == 0).all()
    assert ((share - expected).abs()[allowed] <= 0.03).all()


@pytest.mark.parametrize("kwargs, candidates", [
    ({"negatives": "other"}, lambda B, T, k, t: (B - 1) * (T - k) + 1),
    ({"negatives": "sequence", "exclude": 2}, lambda B, T, k, t: T - k - (min(t, 2) + min(T - k - 1 - t, 2))),
    ({"negatives": "batch", "num_negatives": 5}, lambda B, T, k, t: 6),
])
def test_a_critic_that_knows_nothing_scores_log_of_each_anchors_candidates(kwargs, candidates):
    B, T, K, D = 3, 9, 3, 2
    p, z = torch.zeros(B, T, K, D, dtype=torch.float64), torch.randn(B, T, D, dtype=torch.float64)
    per_step = cpc_loss(p, z, per_step=True, **kwargs)
    expected = torch.tensor([sum(math.log(candidates(B, T, k, t)) for t in range(T - k)) / (T - k)
                             for k in range(1, K + 1)], dtype=torch.float64)
    assert torch.allclose(per_step, expected, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"negatives": "other"}, {"negatives": "sequence", "exclude": 1},
                                    {"negatives": "batch", "exclude": 1, "num_negatives": 3}])
def test_gradcheck_of_the_narrowed_candidates(kwargs):
    p, z = inputs(B=2, T=6, K=2, D=3, seed=2)
    p.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: cpc_loss(a, b, 0.7, generator=torch.Generator().manual_seed(0), **kwargs), (p, z))


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_logits_give_the_loss_and_put_the_positive_where_the_target_says(negatives):
    p, z = inputs()
    per_step = cpc_loss(p, z, negatives=negatives, per_step=True)
    for k in (1, 2, 3):
        logits, target = cpc_logits(p, z, k, negatives=negatives)
        rows = 3 * (7 - k)
        assert logits.shape == (rows, rows if negatives == "batch" else 7 - k) and target.shape == (rows,)
        assert abs(F.cross_entropy(logits, target).item() - per_step[k - 1].item()) <= 1e-12
        # Row b (T - k) + t, its target column holds prediction [b, t, k - 1] . z[b, t + k].
        b, t = 2, 7 - k - 1
        row = b * (7 - k) + t
        assert torch.isclose(logits[row, target[row]], p[b, t, k - 1] @ z[b, t + k])


def test_batch_form_is_info_nce_per_step_on_the_flattened_anchors():
    p, z = inputs(B=4, T=6, K=2, D=3, seed=1)
    for k in (1, 2):
        q, key = p[:, : 6 - k, k - 1].reshape(-1, 3), z[:, k:].reshape(-1, 3)
        expected = info_nce_loss(q, key, None, temperature=0.5, normalize=True)
        got = cpc_loss(p, z, 0.5, True, per_step=True)[k - 1]
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("negatives, candidates", [("batch", lambda B, T, k: B * (T - k)),
                                                   ("sequence", lambda B, T, k: T - k)])
def test_a_critic_that_knows_nothing_scores_log_of_the_candidates(negatives, candidates):
    # All predictions zero: every candidate gets the same score, so step k's loss is log N_k exactly.
    B, T, K, D = 4, 9, 3, 2
    p, z = torch.zeros(B, T, K, D, dtype=torch.float64), torch.randn(B, T, D, dtype=torch.float64)
    per_step = cpc_loss(p, z, negatives=negatives, per_step=True)
    expected = torch.tensor([math.log(candidates(B, T, k)) for k in range(1, K + 1)], dtype=torch.float64)
    assert torch.allclose(per_step, expected, atol=1e-12)


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_gradcheck(negatives):
    p, z = inputs(B=2, T=5, K=2, D=3, seed=2)
    p.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cpc_loss(a, b, 0.7, negatives=negatives), (p, z))
    assert torch.autograd.gradcheck(lambda a, b: cpc_loss(a, b, 0.2, True, negatives=negatives, per_step=True),
                                    (p, z))


def test_predictions_past_the_end_get_no_gradient_and_inputs_are_untouched():
    p, z = inputs(B=2, T=5, K=3, D=4, seed=3)
    p0, z0 = p.clone(), z.clone()
    p.requires_grad_(True)
    cpc_loss(p, z).backward()
    for k in (1, 2, 3):
        assert (p.grad[:, 5 - k :, k - 1] == 0).all()  # t + k >= T: nothing to predict
        assert (p.grad[:, : 5 - k, k - 1] != 0).any()
    assert torch.equal(p.detach(), p0) and torch.equal(z, z0)


def test_half_precision_is_computed_in_float32_and_returned_in_half():
    p, z = inputs(dtype=torch.float32, seed=4)
    for dtype in (torch.float16, torch.bfloat16):
        got = cpc_loss(p.to(dtype), z.to(dtype), negatives="sequence")
        expected = cpc_loss(p.to(dtype).float(), z.to(dtype).float(), negatives="sequence")
        assert got.dtype == dtype and abs(got.float().item() - expected.item()) <= 1e-2 * expected.item()


def test_an_overflowing_loss_is_an_error_not_a_nan():
    p, z = inputs(dtype=torch.float32, seed=5)
    with pytest.raises(ValueError, match="overflowed"):
        cpc_loss(p * 1e19, z * 1e19)


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 4)), {}, r"predictions must have shape \[B, T, K, D\]"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 3)), {}, "latents must have shape"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 4, 4)), {}, "latents must have shape"),
    ((torch.randn(2, 5, 2, 4), torch.randn(5, 4)), {}, r"latents must have shape \[B, T, D\]"),
    ((torch.randn(2, 3, 3, 4), torch.randn(2, 3, 4)), {}, "step K has no anchor"),
    ((torch.randn(1, 3, 2, 4), torch.randn(1, 3, 4)), {}, "needs at least one negative"),
    ((torch.randn(4, 3, 2, 4), torch.randn(4, 3, 4)), {"negatives": "sequence"}, "needs at least one negative"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"negatives": "queue"}, "negatives must be one of"),
    ((torch.randn(1, 5, 2, 4), torch.randn(1, 5, 4)), {"negatives": "other"}, "needs at least one negative"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"exclude": -1}, "exclude must be a non-negative integer"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"exclude": True}, "exclude must be a non-negative integer"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"num_negatives": 0}, "num_negatives must be None"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"num_negatives": [2]}, "gives 1 counts for K = 2"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"negatives": "sequence", "exclude": 3}, "no negative left"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4)), {"negatives": "other", "gather_distributed": True},
     "gather_distributed works with"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4), 0.0), {}, "temperature must be a positive"),
    ((torch.randn(2, 5, 2, 4).int(), torch.randn(2, 5, 4)), {}, "must be a floating-point tensor"),
    ((torch.full((2, 5, 2, 4), float("nan")), torch.randn(2, 5, 4)), {}, "NaN or infinite"),
    ((torch.randn(2, 5, 2, 4), torch.randn(2, 5, 4).numpy()), {}, "must be a torch.Tensor"),
    ((torch.randn(0, 5, 2, 4), torch.randn(0, 5, 4)), {}, "is empty"),
])
def test_bad_inputs_raise_one_line(args, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        cpc_loss(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_cpc_logits_refuses_a_step_out_of_range():
    p, z = inputs()
    for step in (0, 4, 1.0, True):
        with pytest.raises(ValueError, match=r"step must be an integer in \[1, 3\]"):
            cpc_logits(p, z, step)


# ----------------------------------------------------------------------------- encoder and predictor


def test_encoder_shapes_frames_and_twins():
    enc = CPCEncoder(hidden=8, latent_dim=6, context_dim=5, strides=(2, 4))
    assert enc.frame == 8 and enc.out_dim == 5
    x = torch.randn(3, 1, 70)  # 8 frames and 6 samples left over, which are dropped
    z, c = enc.encode(x), enc.context(enc.encode(x))
    assert z.shape == (3, 8, 6) and c.shape == (3, 8, 5) and enc(x).shape == (3, 5)
    assert torch.equal(enc(x), c[:, -1])
    a, b = make_encoder("cpc", seed=3), make_encoder("cpc", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_latent_sees_only_its_frame_and_a_context_only_the_past():
    torch.manual_seed(0)
    enc = CPCEncoder(hidden=8, latent_dim=6, context_dim=5, strides=(2, 4))
    x = torch.randn(2, 1, 64)
    z, c = enc.encode(x), enc.context(enc.encode(x))
    y = x.clone()
    y[:, :, 8 * 3 + 5] += 10.0  # one sample of frame 3
    z2, c2 = enc.encode(y), enc.context(enc.encode(y))
    changed = (z2 - z).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [t == 3 for t in range(8)]  # frames do not overlap
    assert torch.equal(c2[:, :3], c[:, :3]) and not torch.equal(c2[:, 3], c[:, 3])  # causal


def test_predictor_stacks_one_linear_map_per_step():
    head = CPCPredictor(context_dim=5, latent_dim=3, steps=4)
    c = torch.randn(2, 7, 5)
    out = head(c)
    assert out.shape == (2, 7, 4, 3)
    for k in range(1, 5):
        w_k = head.linear.weight[(k - 1) * 3 : k * 3]  # W_k, [D, C]
        assert torch.allclose(out[:, :, k - 1], c @ w_k.T)


@pytest.mark.parametrize("call, message", [
    (lambda: CPCEncoder()(torch.randn(2, 64)), r"expects input of shape \[N, 1, T\]"),
    (lambda: CPCEncoder()(torch.randn(2, 2, 64)), r"expects input of shape \[N, 1, T\]"),
    (lambda: CPCEncoder()(torch.randn(2, 1, 10)), "at least one frame"),
    (lambda: CPCEncoder()(torch.ones(2, 1, 64, dtype=torch.long)), "floating-point"),
    (lambda: CPCEncoder().context(torch.randn(2, 5, 7)), "expects latents of shape"),
    (lambda: CPCEncoder(strides=()), "strides must be a non-empty tuple"),
    (lambda: CPCEncoder(strides=(4, 0)), "strides"),
    (lambda: CPCEncoder(hidden=0), "hidden must be a positive integer"),
    (lambda: CPCPredictor(steps=0), "steps must be a positive integer"),
    (lambda: CPCPredictor(context_dim=4)(torch.randn(3, 5)), r"expects input of shape \[..., 4\]"),
])
def test_encoder_and_predictor_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the method


def test_registered_without_a_recipe_and_built_by_name():
    assert METHODS["cpc"] is CPC and REGISTRY["cpc"].recipes == ()
    method = make_method("cpc", temperature=0.1, negatives="sequence")  # no temperature: CPC's critic has none
    assert method.negatives == "sequence" and method.n_views == 1 and not method.needs_augment
    with pytest.raises(ValueError, match="negatives must be one of"):
        make_method("cpc", negatives="queue")
    with pytest.raises(ValueError, match="num_negatives must be None"):
        make_method("cpc", num_negatives=-1)


@pytest.mark.parametrize("options", [{"negatives": "sequence", "exclude": 1},
                                     {"negatives": "other", "num_negatives": [4, 3]}])
def test_the_method_passes_exclude_and_num_negatives_to_the_loss(options):
    x = make_speech_sequences(n_speakers=2, n_sequences=3, length=256, seed=0).x
    torch.manual_seed(0)
    enc, head = CPCEncoder(hidden=8, latent_dim=8, context_dim=8, strides=(4, 8)), CPCPredictor(8, 8, steps=2)
    method = make_method("cpc", **options)
    torch.manual_seed(1)  # the draws of num_negatives come from the global generator
    got = method.loss(enc, head, [x], None, torch.arange(3))
    z = enc.encode(x)
    expected = cpc_loss(head(enc.context(z)), z, generator=torch.Generator().manual_seed(1), **options)
    assert torch.allclose(got, expected, atol=1e-6)


def test_pretrain_runs_cpc_on_sequences_and_learns():
    data = make_speech_sequences(n_speakers=4, n_sequences=64, length=256, seed=1)
    torch.manual_seed(0)
    enc, head = CPCEncoder(hidden=16, latent_dim=16, context_dim=16), CPCPredictor(16, 16, steps=3)
    before = cpc_loss(head(enc.context(enc.encode(data.x[:16]))), enc.encode(data.x[:16])).item()
    history = pretrain(enc, head, data.x, method="cpc", epochs=3, batch_size=16, lr=1e-2, progress=False)
    assert history.steps == 12 and history.samples == 192
    assert history.loss[-1] < history.loss[0] and history.loss[-1] < before
    assert enc(data.x[:5]).shape == (5, 16)


def test_the_method_names_what_it_needs_from_the_encoder():
    from clbook.encoders import ConvEncoder, ProjectionHead

    with pytest.raises(ValueError, match=r"needs an encoder with encode\(x\)"):
        pretrain(ConvEncoder(), ProjectionHead(), torch.rand(8, 1, 28, 28), method="cpc", epochs=1, batch_size=4,
                 progress=False)


# ----------------------------------------------------------------------------- two processes


WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(negatives: str, rank: int | None) -> dict:
    """Parameters after one CPC step: on the whole batch (rank None) or on this rank's half."""
    x = make_speech_sequences(n_speakers=2, n_sequences=2 * WORLD, length=192, seed=0).x
    torch.manual_seed(0)
    enc, head = CPCEncoder(hidden=8, latent_dim=8, context_dim=8, strides=(4, 4)), CPCPredictor(8, 8, steps=2)
    method = CPC(negatives)
    method.gather = rank is not None
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    idx = torch.arange(2 * WORLD) if rank is None else torch.arange(2 * rank, 2 * rank + 2)
    loss = train_step(method, enc, head, opt, None, x[idx], None, idx, None, torch.Generator(), 0, 1)
    return {"loss": loss, "params": [p.detach().clone() for p in params]}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=WORLD)
    try:
        two = {neg: _one_step(neg, rank) for neg in ("batch", "sequence")}
    finally:
        torch.distributed.destroy_process_group()
    one = {neg: _one_step(neg, None) for neg in ("batch", "sequence")}
    torch.save({"one": one, "two": two}, f"{out_dir}/rank{rank}.pt")


def test_two_processes_take_the_step_one_process_takes_on_the_whole_batch(tmp_path):
    """With "batch" the latents of both ranks are every prediction's candidates; "sequence" shares nothing."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for rank in range(WORLD):
        for negatives in ("batch", "sequence"):
            one, two = results[rank]["one"][negatives], results[rank]["two"][negatives]
            assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
            for a, b in zip(one["params"], two["params"]):
                assert torch.allclose(a, b, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_loss_matches_the_cpu_and_pretrain_runs():
    p, z = inputs(B=4, T=9, K=3, D=6, seed=6, dtype=torch.float32)
    for negatives in ("batch", "sequence"):
        cpu = cpc_loss(p, z, negatives=negatives, per_step=True)
        gpu = cpc_loss(p.cuda(), z.cuda(), negatives=negatives, per_step=True)
        assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    data = make_speech_sequences(n_speakers=2, n_sequences=32, length=256, seed=2)
    enc, head = CPCEncoder(hidden=16, latent_dim=16, context_dim=16), CPCPredictor(16, 16, steps=2)
    history = pretrain(enc, head, data.x, method="cpc", epochs=1, batch_size=8, lr=1e-2, device="cuda",
                       progress=False)
    assert history.steps == 4 and next(enc.parameters()).device.type == "cuda"
