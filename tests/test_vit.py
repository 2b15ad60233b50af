"""The small ViT of notebook 13 against plain re-implementations, and DINO's weight-normalized last layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbook.encoders import ENCODERS, ViT, ViTBlock, WeightNormLinear, make_encoder


def plain_block(block: ViTBlock, x: torch.Tensor) -> torch.Tensor:
    """The same block written with torch's own nn.MultiheadAttention and the block's weights copied in."""
    w = block.width
    mha = nn.MultiheadAttention(w, block.heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.qkv.weight)  # rows: queries, keys, values, as in the block
        mha.in_proj_bias.copy_(block.qkv.bias)
        mha.out_proj.weight.copy_(block.proj.weight)
        mha.out_proj.bias.copy_(block.proj.bias)
    h = F.layer_norm(x, (w,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    x = x + mha(h, h, h, need_weights=False)[0]
    h = F.layer_norm(x, (w,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    fc1, fc2 = block.mlp[0], block.mlp[2]
    return x + F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


def test_one_block_matches_torch_multihead_attention():
    torch.manual_seed(0)
    block = ViTBlock(width=16, heads=4, mlp_ratio=2).double()
    for p in block.parameters():  # non-trivial layer norms and biases too
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), plain_block(block, x), rtol=1e-10, atol=1e-10)


def test_one_block_matches_torchvision_encoder_block():
    from torchvision.models.vision_transformer import EncoderBlock

    torch.manual_seed(1)
    block = ViTBlock(width=12, heads=3, mlp_ratio=2).double()
    theirs = EncoderBlock(num_heads=3, hidden_dim=12, mlp_dim=24, dropout=0.0, attention_dropout=0.0).double()
    with torch.no_grad():
        theirs.ln_1.load_state_dict(block.norm1.state_dict())
        theirs.ln_2.load_state_dict(block.norm2.state_dict())
        theirs.self_attention.in_proj_weight.copy_(block.qkv.weight)
        theirs.self_attention.in_proj_bias.copy_(block.qkv.bias)
        theirs.self_attention.out_proj.load_state_dict(block.proj.state_dict())
        theirs.mlp[0].load_state_dict(block.mlp[0].state_dict())
        theirs.mlp[3].load_state_dict(block.mlp[2].state_dict())
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(block(x), theirs.eval()(x), rtol=1e-10, atol=1e-10)


def plain_vit(vit: ViT, x: torch.Tensor) -> torch.Tensor:
    """Patches cut with unfold, projected by a matrix product, class token, positions, plain blocks."""
    p = vit.patch
    patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [N, P, p*p], patches row by row
    tokens = patches @ vit.patch_projection.weight.reshape(vit.width, -1).T + vit.patch_projection.bias
    tokens = torch.cat([vit.class_token.expand(len(x), -1, -1), tokens], dim=1) + vit.position
    for block in vit.blocks:
        tokens = plain_block(block, tokens)
    return F.layer_norm(tokens[:, 0], (vit.width,), vit.norm.weight, vit.norm.bias, vit.norm.eps)


def test_whole_vit_matches_the_plain_version():
    vit = make_encoder("vit", seed=0).double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    out = vit(x)
    assert out.shape == (4, 64) and vit.out_dim == 64 and vit.grid == 4
    torch.testing.assert_close(out, plain_vit(vit, x), rtol=1e-9, atol=1e-9)
    assert ENCODERS["vit"] is ViT


def test_uint8_digits_are_scaled_like_floats():
    vit = make_encoder("vit", seed=0)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(vit(x), vit(x.float() / 255))


def test_smaller_crops_get_interpolated_positions():
    vit = make_encoder("vit", seed=0).double()
    pos = vit.position_embedding(2)
    assert pos.shape == (1, 5, 64)
    torch.testing.assert_close(pos[:, 0], vit.position[:, 0])  # the class token's position is kept
    grid = vit.position[0, 1:].T.reshape(1, 64, 4, 4)
    expected = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False).reshape(64, 4).T
    torch.testing.assert_close(pos[0, 1:], expected)
    assert vit.position_embedding(4) is vit.position
    out = vit(torch.rand(3, 1, 14, 14, dtype=torch.float64))
    assert out.shape == (3, 64) and torch.isfinite(out).all()
    # Gradients reach the learned grid through the interpolation.
    vit(torch.rand(3, 1, 14, 14, dtype=torch.float64)).sum().backward()
    assert vit.position.grad[0, 1:].abs().sum() > 0


def test_class_attention_is_row_zero_of_the_last_block():
    vit = make_encoder("vit", seed=0).double().train()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    maps = vit.class_attention(x)
    assert maps.shape == (3, 4, 4, 4) and vit.training  # [N, heads, grid, grid]; the mode is restored
    # By hand: the tokens entering the last block, its queries and keys, the softmax of row 0.
    tokens = vit.tokens(x)
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
    last = vit.blocks[-1]
    q, k, _ = last.qkv(last.norm1(tokens)).view(3, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
    torch.testing.assert_close(maps, weights[:, :, 0, 1:].reshape(3, 4, 4, 4))
    assert (maps.sum(dim=(2, 3)) < 1).all() and (maps >= 0).all()
    assert last.attention is None and not last.keep_attention  # nothing kept afterwards
    assert vit.class_attention(x, block=0).shape == (3, 4, 4, 4)


def test_frozen_patch_projection_gets_no_gradient():
    vit = make_encoder("vit", seed=0, freeze_patch_projection=True)
    twin = make_encoder("vit", seed=0)
    torch.testing.assert_close(vit.patch_projection.weight, twin.patch_projection.weight)  # same random start
    vit(torch.rand(4, 1, 28, 28)).pow(2).sum().backward()
    assert vit.patch_projection.weight.grad is None and vit.patch_projection.bias.grad is None
    assert all(p.grad is not None for n, p in vit.named_parameters() if not n.startswith("patch_projection"))


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(2, 28, 28), r"square images \[N, 1, S, S\]"),
        (torch.rand(2, 3, 28, 28), r"square images"),
        (torch.rand(2, 1, 28, 21), r"square images"),
        (torch.rand(2, 1, 30, 30), "multiple of 7 up to 28"),
        (torch.rand(2, 1, 35, 35), "multiple of 7 up to 28"),
        (torch.rand(2, 1, 10, 10), "multiple of 7"),
        (torch.ones(2, 1, 28, 28, dtype=torch.int64), "uint8"),
        ([[0.0]], "square images"),
    ],
)
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        make_encoder("vit", seed=0)(x)


def test_bad_options():
    with pytest.raises(ValueError, match="multiple of heads"):
        ViT(width=10, heads=4)
    with pytest.raises(ValueError, match="multiple of patch"):
        ViT(patch=5)
    with pytest.raises(ValueError, match="depth"):
        ViT(depth=0)
    with pytest.raises(ValueError, match="freeze_patch_projection"):
        ViT(freeze_patch_projection="yes")


def test_the_patchify_checker_agrees_with_unfold():
    from clbook.exercises import check_patchify

    x = torch.rand(3, 1, 28, 28)
    for p in (4, 7, 14):
        expected = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)
        torch.testing.assert_close(check_patchify.reference(x, p), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- DINO's last layer


def test_weight_norm_linear_matches_torch_weight_norm():
    torch.manual_seed(0)
    layer = WeightNormLinear(6, 5, norm_last_layer=False)
    with torch.no_grad():
        layer.length.uniform_(0.5, 2.0)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(layer.length)
        ref.parametrizations.weight.original1.copy_(layer.direction)
    z = torch.randn(4, 6)
    torch.testing.assert_close(layer(z), ref(F.normalize(z, dim=1)))


def test_normalized_last_layer_gives_cosines_and_trains_directions_only():
    torch.manual_seed(0)
    layer = WeightNormLinear(6, 5)
    z = 10 * torch.randn(4, 6)
    out = layer(z)
    torch.testing.assert_close(out, F.normalize(z, dim=1) @ F.normalize(layer.direction, dim=1).T)
    assert out.abs().max() <= 1 + 1e-6
    out.sum().backward()
    assert layer.length.grad is None and layer.direction.grad is not None
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        layer(torch.randn(4, 5))
