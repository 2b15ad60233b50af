"""Multi-crop augmentation (clbook.data.MultiCrop) and the views the training loop draws."""

import pytest
import torch
import torch.nn.functional as F

from clbook.data import DigitAugment, MultiCrop

FIXED = DigitAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, translate=0.0)


def _digits(n=6, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _theta(n, w, h, cx=0.0, cy=0.0):
    """Axis-aligned crop: output [-1, 1]^2 -> a w x h box (fractions of the image) centred at (cx, cy)."""
    return torch.tensor([[w, 0.0, cx], [0.0, h, cy]]).expand(n, 2, 3).clone()


def test_views_shapes_and_order():
    x = _digits(5)
    crop = MultiCrop(n_global=2, n_local=3, local_size=14)
    views = crop.views(x, 5, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 14, 14)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert crop.n_views == 5


def test_views_reproducible_with_seed_and_differ_between_seeds():
    x = _digits()
    crop = MultiCrop()
    a = crop.views(x, 6, torch.Generator().manual_seed(3))
    b = crop.views(x, 6, torch.Generator().manual_seed(3))
    c = crop.views(x, 6, torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not any(torch.equal(u, v) for u, v in zip(a, c))
    # The views of one call are independent draws, not copies.
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[2], a[3])


def test_views_draw_globals_then_locals_from_one_stream():
    """Documented order: the global crops' draws, then the local crops', from the same generator."""
    x = _digits()
    crop = MultiCrop(n_global=2, n_local=2, local_size=12)
    views = crop.views(x, 4, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    expected = [crop.global_augment(x, g) for _ in range(2)]
    expected += [crop.local_augment.render(x, crop.local_augment.matrices(len(x), g), 12) for _ in range(2)]
    assert all(torch.equal(u, v) for u, v in zip(views, expected))


def test_local_crop_of_a_known_affine_is_the_crop_resized_by_hand():
    x = _digits()
    # Half the width and height (a quarter of the area), centred, at 14 pixels: exactly the central
    # 14x14 pixels (with align_corners=False output pixel i lands on the centre of input pixel i + 7).
    out = FIXED.render(x, _theta(len(x), 0.5, 0.5), size=14)
    torch.testing.assert_close(out, x[:, :, 7:21, 7:21])
    # The top-left quarter: centre at (-0.5, -0.5) in [-1, 1] coordinates.
    out = FIXED.render(x, _theta(len(x), 0.5, 0.5, -0.5, -0.5), size=14)
    torch.testing.assert_close(out, x[:, :, :14, :14])
    # The whole image at 14 pixels: every output pixel sits between four input pixels, so bilinear
    # sampling averages 2x2 blocks, i.e. the image down-sampled by hand.
    out = FIXED.render(x, _theta(len(x), 1.0, 1.0), size=14)
    torch.testing.assert_close(out, F.avg_pool2d(x, 2))
    # At the input's size (no size given), the identity returns the image.
    torch.testing.assert_close(FIXED.render(x, _theta(len(x), 1.0, 1.0)), x)


def test_local_crops_cover_the_area_fraction_they_claim():
    """The crop's area fraction is |det| of theta's linear part (the output square has area 4 in
    [-1, 1]^2 coordinates, the image too). Check it on a marked image: a local view of an image whose
    pixels are all 1 inside and whose crop stays inside sees no background."""
    local = MultiCrop().local_augment
    theta = local.matrices(4000, torch.Generator().manual_seed(0))
    area = torch.linalg.det(theta[:, :, :2]).abs()
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 0.4 + 1e-6
    assert area.mean() == pytest.approx(0.25, abs=0.01)  # uniform on [0.1, 0.4]
    # Independent check of the area on pixels: an axis-aligned crop of a w x h box of ones inside a
    # larger zero image, rendered at 14 pixels, is all ones when the box is the crop.
    big = torch.zeros(1, 1, 28, 28)
    big[:, :, 7:21, 7:21] = 1.0  # a quarter of the image
    out = FIXED.render(big, _theta(1, 0.5, 0.5), size=14)
    assert torch.equal(out, torch.ones_like(out))
    # The same box seen by the full-image view at 14 pixels covers a quarter of its pixels.
    full = FIXED.render(big, _theta(1, 1.0, 1.0), size=14)
    assert full.mean().item() == pytest.approx(0.25)


def test_digit_augment_views_is_the_same_stream_as_calls():
    x = _digits()
    aug = DigitAugment()
    views = aug.views(x, 3, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    assert all(torch.equal(v, aug(x, g)) for v in views)
    with pytest.raises(ValueError, match="n_views"):
        aug.views(x, 0)


def test_bad_input_is_a_clear_error():
    x = _digits()
    crop = MultiCrop(n_local=4)
    with pytest.raises(ValueError, match="2 \\+ 4 = 6 views, but 2 were asked"):
        crop.views(x, 2)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        crop.views(x[0], 6)
    with pytest.raises(ValueError, match="n_global"):
        MultiCrop(n_global=0)
    with pytest.raises(ValueError, match="n_local"):
        MultiCrop(n_local=-1)
    with pytest.raises(ValueError, match="local_size"):
        MultiCrop(local_size=0)
    with pytest.raises(ValueError, match="local_augment must be a DigitAugment"):
        MultiCrop(local_augment=lambda x, g: x)
    with pytest.raises(ValueError, match="size"):
        FIXED(x, size=0)
    with pytest.raises(ValueError, match="theta must have shape"):
        FIXED.render(x, torch.zeros(2, 2, 3))


def test_input_not_mutated_and_uint8_accepted():
    x = _digits()
    before = x.clone()
    MultiCrop().views(x, 6, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    u8 = (x * 255).round().to(torch.uint8)
    views = MultiCrop(n_local=1).views(u8, 3, torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float32 and float(v.max()) <= 1.0 for v in views)


def test_no_local_views_is_plain_augmentation():
    x = _digits()
    crop = MultiCrop(n_local=0)
    views = crop.views(x, 2, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    assert all(torch.equal(v, crop.global_augment(x, g)) for v in views)


def test_train_step_refuses_a_multicrop_with_the_wrong_number_of_views():
    from clbook.methods import as_method
    from clbook.training import check_method_data

    method = as_method("simclr")
    with pytest.raises(ValueError, match="augment makes 6 views"):
        check_method_data(method, None, MultiCrop())
    check_method_data(method, None, MultiCrop(n_local=0))  # 2 views: fine


def test_conv_encoder_any_size_is_the_default_on_28x28_and_takes_small_crops():
    from clbook.encoders import ConvEncoder

    torch.manual_seed(0)
    plain = ConvEncoder(out_dim=32)
    flexible = ConvEncoder(out_dim=32, any_size=True)
    flexible.load_state_dict(plain.state_dict())  # same parameters, same names
    x = _digits(4)
    torch.testing.assert_close(flexible(x), plain(x), rtol=0, atol=0)
    assert flexible(torch.rand(3, 1, 14, 14)).shape == (3, 32)
    # A 14x14 crop pools 14 -> 7 -> 4 (ceil_mode keeps the last row and column): the bottom-right
    # pixel of a local crop still reaches the features.
    small = torch.zeros(1, 1, 14, 14)
    poked = small.clone()
    poked[..., 13, 13] = 1.0
    assert not torch.equal(flexible(small), flexible(poked))
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        plain(torch.rand(2, 1, 14, 14))
    with pytest.raises(ValueError, match="H, W >= 2"):
        flexible(torch.rand(2, 1, 1, 14))
    with pytest.raises(ValueError, match="any_size"):
        ConvEncoder(any_size="yes")
