"""MoCo v3 and DINO as training methods: their losses from the networks by hand, their updates, their runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from clbook.data import LIGHT_AUGMENT, MultiCrop, load_shipped_mnist
from clbook.encoders import ProjectionHead, make_encoder
from clbook.losses import dino_loss, info_nce_loss
from clbook.methods import DINO, REGISTRY, MoCoV3, make_method
from clbook.methods.mocov3 import cosine_momentum
from clbook.training import pretrain, train_step


def networks(seed: int = 0, **vit):
    encoder = make_encoder("vit", seed=seed, width=16, depth=1, heads=2, **vit)
    torch.manual_seed(seed)
    return encoder, ProjectionHead(16, 32, 8, batchnorm=True)


def digits(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- MoCo v3


def mocov3_ctr(q, k, tau):
    """MoCo v3's ctr(q, k) from the paper's Algorithm 1, one process: CE(q k^T / tau, arange) * 2 tau."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T / tau
    return F.cross_entropy(logits, torch.arange(len(q))) * (2 * tau)


def test_mocov3_loss_is_the_papers_symmetric_ctr():
    encoder, head = networks()
    method = MoCoV3(temperature=0.2, pred_hidden=12)
    method.setup(encoder, head)
    v1, v2 = digits(seed=1), digits(seed=2)
    for module in (encoder, head, method):
        module.train()
    torch.manual_seed(3)
    loss = method.loss(encoder, head, [v1, v2], None, torch.arange(16))
    # By hand: queries through the predictor, keys from the key copies (equal to the online ones at the start).
    q = method.predictor(head(encoder(torch.cat([v1, v2]))))
    with torch.no_grad():
        k = method.key_head(method.key_encoder(torch.cat([v1, v2])))
    expected = mocov3_ctr(q[:16], k[16:], 0.2) + mocov3_ctr(q[16:], k[:16], 0.2)
    torch.testing.assert_close(loss, expected)
    # ... which is 2 tau times clbook's in-batch InfoNCE, both ways.
    ours = 0.4 * (info_nce_loss(q[:16], k[16:], None, 0.2) + info_nce_loss(q[16:], k[:16], None, 0.2))
    torch.testing.assert_close(loss, ours)
    assert method.step_loss == [pytest.approx(loss.item())]


def test_mocov3_step_updates_keys_by_momentum_and_records_gradients():
    encoder, head = networks()
    method = MoCoV3(momentum=0.9, pred_hidden=12)
    method.setup(encoder, head)
    params = [*encoder.parameters(), *head.parameters(), *method.trainable_parameters()]
    assert not any(p is q for p in params for q in method.key_encoder.parameters())  # keys are not trained
    opt = torch.optim.SGD(params, lr=0.1)
    before_key = [p.detach().clone() for p in method.key_encoder.parameters()]
    method.start_epoch(1, 1)
    train_step(method, encoder, head, opt, None, digits(), None, torch.arange(16), LIGHT_AUGMENT,
               torch.Generator().manual_seed(0), 0, 10)
    m = cosine_momentum(0, 10, 0.9)
    assert m == pytest.approx(0.9)
    for p_key, p0, p in zip(method.key_encoder.parameters(), before_key, encoder.parameters()):
        torch.testing.assert_close(p_key, m * p0 + (1 - m) * p.detach())
    assert len(method.step_grad_norm) == 1 and method.step_grad_norm[0] > 0
    logged = method.end_epoch(encoder, head)
    assert logged["grad_norm"] == pytest.approx(method.step_grad_norm[0]) and -1 <= logged["pos_cos"] <= 1


def test_cosine_momentum_rises_from_start_to_end():
    values = [cosine_momentum(s, 100, 0.99) for s in range(101)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.995) and all(a <= b for a, b in zip(values, values[1:]))


def test_frozen_patch_projection_stays_put_in_training():
    encoder, head = networks(freeze_patch_projection=True)
    start = encoder.patch_projection.weight.detach().clone()
    X = digits(32)
    pretrain(encoder, head, X, method="mocov3", method_options={"pred_hidden": 12}, epochs=1, batch_size=16,
             augment=LIGHT_AUGMENT, progress=False, device="cpu")
    torch.testing.assert_close(encoder.patch_projection.weight, start)


# ----------------------------------------------------------------------------- DINO


def test_dino_loss_is_dino_loss_on_the_networks_outputs_teacher_on_global_views_only():
    encoder, head = networks()
    method = DINO(out_dim=10, n_local=2, momentum=0.9)
    method.setup(encoder, head)
    for module in (encoder, head, method):
        module.train()
    crops = MultiCrop(n_local=2)
    views = crops.views(digits(), 4, torch.Generator().manual_seed(0))
    assert [tuple(v.shape[2:]) for v in views] == [(28, 28), (28, 28), (14, 14), (14, 14)]
    loss = method.loss(encoder, head, views, None, torch.arange(16))
    # By hand, each view separately (no batch norm in the encoder; the head's batch norm saw the
    # views in groups of equal size, so do the same here).
    with torch.no_grad():
        glob = method.last_layer(head(encoder(torch.cat(views[:2]))))
        local = method.last_layer(head(encoder(torch.cat(views[2:]))))
        teacher = method.teacher_last_layer(method.teacher_head(method.teacher_encoder(torch.cat(views[:2]))))
    student = [*glob.chunk(2), *local.chunk(2)]
    expected = dino_loss(student, list(teacher.chunk(2)), torch.zeros(10), 0.1, 0.04)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The center moved to 0.1 x the teacher's mean output (momentum 0.9 from zero).
    torch.testing.assert_close(method.criterion.center, 0.1 * teacher.mean(dim=0), rtol=1e-5, atol=1e-6)
    assert method.step_entropy[0] + method.step_kl[0] == pytest.approx(loss.item(), rel=1e-5)
    assert 0 <= method.step_entropy[0] <= math.log(10) + 1e-6


def test_dino_last_layer_is_frozen_during_its_epochs_and_teacher_follows():
    encoder, head = networks()
    method = DINO(out_dim=10, momentum=0.5, freeze_last_layer=1)
    method.setup(encoder, head)
    params = [*encoder.parameters(), *head.parameters(), *method.trainable_parameters()]
    assert any(p is method.last_layer.direction for p in params) and not method.last_layer.length.requires_grad
    opt = torch.optim.SGD(params, lr=0.5)
    start = method.last_layer.direction.detach().clone()
    for epoch in (1, 2):
        method.start_epoch(epoch, 2)
        teacher_before = [p.detach().clone() for p in method.teacher_encoder.parameters()]
        train_step(method, encoder, head, opt, None, digits(), None, torch.arange(16), LIGHT_AUGMENT,
                   torch.Generator().manual_seed(epoch), epoch - 1, 2)
        moved = not torch.equal(method.last_layer.direction, start)
        assert moved == (epoch == 2)
        m = method.momentum
        for p_t, p0, p in zip(method.teacher_encoder.parameters(), teacher_before, encoder.parameters()):
            torch.testing.assert_close(p_t, m * p0 + (1 - m) * p.detach())
    logged = method.end_epoch(encoder, head)
    assert set(logged) == {"teacher_entropy", "kl", "outputs_used", "top_output_share"}
    assert 1 <= logged["outputs_used"] <= 10 and 0.1 <= logged["top_output_share"] <= 1


def test_dino_without_centering_keeps_a_zero_center():
    encoder, head = networks()
    method = DINO(out_dim=10, centering=False)
    method.setup(encoder, head)
    method.train()
    method.loss(encoder, head, [digits(seed=1), digits(seed=2)], None, torch.arange(16))
    assert torch.equal(method.criterion.center, torch.zeros(10))


def test_dino_refuses_the_wrong_number_of_views():
    encoder, head = networks()
    method = DINO(out_dim=10, n_local=2)
    method.setup(encoder, head)
    with pytest.raises(ValueError, match="expects 4 views"):
        method.loss(encoder, head, [digits(), digits()], None, torch.arange(16))
    with pytest.raises(ValueError, match="augment makes 4 views but dino takes 2"):
        pretrain(encoder, head, digits(32), method="dino", epochs=1, batch_size=16, augment=MultiCrop(n_local=2),
                 progress=False, device="cpu")


@pytest.mark.parametrize("options, match", [
    ({"out_dim": 1}, "out_dim"), ({"center_momentum": 2.0}, "center_momentum"), ({"teacher_temperature": 0}, "teacher"),
    ({"momentum": 0.99, "final_momentum": 0.9}, "final_momentum"), ({"n_local": -1}, "n_local"),
])
def test_dino_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        DINO(**options)


def test_mocov3_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        MoCoV3(temperature=0.0)
    with pytest.raises(ValueError, match="final_momentum"):
        MoCoV3(momentum=0.99, final_momentum=0.5)


# ----------------------------------------------------------------------------- both, through the loop and the CLI


@pytest.mark.parametrize("name", ["mocov3", "dino"])
def test_recipes_train_the_vit_with_pretrain(name):
    recipe = REGISTRY[name].recipes[0]
    assert recipe.encoder == "vit" and not recipe.reproduce
    split = load_shipped_mnist()
    encoder = make_encoder("vit", seed=0)
    head = ProjectionHead(encoder.out_dim, 128, 64, **recipe.head)
    cfg = recipe.config()
    cfg.pop("head", None)
    cfg.update(epochs=1, batch_size=32)
    history = pretrain(encoder, head, split.X_train[:64], method=name, progress=False, device="cpu", **cfg)
    assert history.steps == 2 and all(math.isfinite(v) for v in history.loss)


def test_command_line_pretrains_the_vit(tmp_path):
    from clbook.__main__ import main

    out = tmp_path / "dino.json"
    assert main(["pretrain", "--method", "dino", "--offline", "--limit", "64", "--batch-size", "32", "--epochs", "1",
                 "--device", "cpu", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["method"] == "dino" and summary["steps"] == 2
    assert make_method("mocov3", 0.3).temperature == 0.3
