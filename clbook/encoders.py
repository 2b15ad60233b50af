"""Encoders for the experiments and the projection head used during contrastive pre-training.

Sizes (``in_dim``, ``hidden``, ``out_dim``, ...) must be positive integers. The image encoders
(:class:`ConvEncoder`, :class:`FCEncoder`, :class:`NotesCNN`) take float images in [0, 1]; a
``uint8`` batch (0-255) is converted as torchvision's ``ToTensor`` does, divided by 255 into
float32 (:func:`clbook.checks.check_images`), never modified in place.

Every encoder maps a batch to features ``[N, out_dim]``; that output is what linear probes,
kNN and t-SNE look at. The contrastive loss is applied after a :class:`ProjectionHead`, which is
thrown away after pre-training (Chen et al., 2020; Khosla et al., 2020): the head may discard
information the loss does not need, the features below it keep more of it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clbook.checks import check_bool, check_images, check_int

__all__ = [
    "MLPEncoder",
    "ConvEncoder",
    "FCEncoder",
    "NotesMLP",
    "NotesCNN",
    "ProjectionHead",
    "PredictionHead",
    "WSLinear",
    "WSConv2d",
    "make_norm",
    "NORMS",
    "Prototypes",
    "make_encoder",
    "ENCODERS",
    "PixelFeatures",
    "CPCEncoder",
    "CPCPredictor",
    "BagOfWordsEncoder",
    "ViT",
    "ViTBlock",
    "WeightNormLinear",
]


def _sizes(**sizes) -> list[int]:
    """The given layer sizes as ints, each checked to be a positive integer."""
    return [check_int(name, value, 1) for name, value in sizes.items()]


def _images(x: Tensor, name: str) -> Tensor:
    """A digit batch ``[N, 1, 28, 28]`` as floats (``uint8`` divided by 255)."""
    _check_input(x, (1, 28, 28), name)
    return check_images(f"{name} input", x)


def _check_input(x: Tensor, trailing: tuple[int, ...], name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} expects a tensor input, got {type(x).__name__}")
    if x.dim() != len(trailing) + 1 or tuple(x.shape[1:]) != trailing:
        raise ValueError(f"{name} expects input of shape [N, {', '.join(map(str, trailing))}], "
                         f"got {tuple(x.shape)}")


class MLPEncoder(nn.Module):
    """Small MLP for tabular data (Iris): ``in_dim -> hidden -> hidden -> out_dim``.

    Shapes: input ``[N, in_dim]``, output ``[N, out_dim]``.

    Parameters
    ----------
    in_dim : int, default 4
    hidden : int, default 64
    out_dim : int, default 16
    """

    def __init__(self, in_dim: int = 4, hidden: int = 64, out_dim: int = 16) -> None:
        super().__init__()
        in_dim, hidden, out_dim = _sizes(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, (self.in_dim,), type(self).__name__)
        return self.net(x)


class ConvEncoder(nn.Module):
    """Small CNN for 28x28 digits: two conv-pool blocks and a 128-d linear layer.

    ``[N, 1, 28, 28] -> conv3x3(16) ReLU maxpool -> conv3x3(32) ReLU maxpool -> [N, 32*7*7]
    -> linear -> [N, out_dim]``. Narrow on purpose: an epoch over 8,000 digits in two views
    then takes seconds on a laptop CPU, and it is still enough for MNIST.

    Parameters
    ----------
    out_dim : int, default 128
    channels : (int, int), default (16, 32)
    any_size : bool, default False
        Also accept images of other sizes ``[N, 1, H, W]`` (H, W >= 2), such as multi-crop's
        14x14 local views (:class:`clbook.data.MultiCrop`): the max-pools round up (``ceil_mode``)
        and an adaptive average pool brings the last feature map to 7x7 for the linear layer. On
        28x28 inputs this computes exactly what the default does (even sizes pool the same either
        way, and the adaptive pool of a 7x7 map is the identity), with the same parameters
        (interchangeable ``state_dict``).
    """

    def __init__(self, out_dim: int = 128, channels: tuple[int, int] = (16, 32), any_size: bool = False) -> None:
        super().__init__()
        if not isinstance(channels, (tuple, list)) or len(channels) != 2:
            raise ValueError(f"channels must be a pair of positive integers, got {channels!r}")
        out_dim, c1, c2 = _sizes(out_dim=out_dim, **{"channels[0]": channels[0], "channels[1]": channels[1]})
        self.out_dim = out_dim
        self.any_size = check_bool("any_size", any_size)
        # The linear layer reads a 7x7 map, so other sizes need pooling to 7x7. It is an option, off
        # by default, so that the default encoder and every result trained with it stay as they were;
        # ceil_mode keeps the last row and column of odd maps (14 -> 7 -> 4, not 3) instead of
        # dropping a seventh of a local crop. (Resizing 14x14 crops up to 28x28 instead would cost
        # what a global view costs, which is what multi-crop's small views are there to avoid.)
        pool = (lambda: nn.MaxPool2d(2, ceil_mode=True)) if self.any_size else (lambda: nn.MaxPool2d(2))
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), pool(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), pool(),
            *([nn.AdaptiveAvgPool2d(7)] if self.any_size else []),
            nn.Flatten(),
        )
        self.fc = nn.Linear(c2 * 7 * 7, out_dim)
        # Channels-last memory layout (same values, same results up to rounding): on a CPU the
        # convolutions, ReLUs and max-pools run about 1.6x faster per training step with it.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.any_size:
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1 or min(x.shape[2:]) < 2:
                raise ValueError(f"ConvEncoder expects input of shape [N, 1, H, W] with H, W >= 2, "
                                 f"got {tuple(getattr(x, 'shape', ()))}")
            x = check_images("ConvEncoder input", x)
        else:
            x = _images(x, type(self).__name__)
        # Flatten reads the logical [C, H, W] order whatever the layout, so fc sees the usual order.
        return self.fc(self.features(x.contiguous(memory_format=torch.channels_last)))


class FCEncoder(nn.Module):
    """Fully connected encoder for 28x28 digits: ``784 -> hidden -> out_dim``.

    Without convolutions it has no built-in notion that neighbouring pixels belong together,
    so an untrained one is a much weaker baseline than an untrained CNN.

    Parameters
    ----------
    out_dim : int, default 128
    hidden : int, default 512
    """

    def __init__(self, out_dim: int = 128, hidden: int = 512) -> None:
        super().__init__()
        out_dim, hidden = _sizes(out_dim=out_dim, hidden=hidden)
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(28 * 28, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_images(x, type(self).__name__))


# ----------------------------------------------------------------------------- the lecture notes' encoders
# The lecture notes the course is built from run their own Iris and MNIST experiments with these two
# networks. Notebooks 04 and 05 re-run those experiments as the notes ran them; the course's own
# encoders above differ on purpose (wider MLP with ReLU, a projection head, no ReLU on the features).


class NotesMLP(nn.Module):
    """The notes' Iris encoder: ``4 -> 10 -> 6`` with a tanh on the hidden layer.

    SupCon is applied to its 6 outputs directly (the notes use no projection head), and the
    same 6 outputs are the frozen features that the linear head sees.

    Shapes: input ``[N, in_dim]``, output ``[N, out_dim]``.
    """

    def __init__(self, in_dim: int = 4, hidden: int = 10, out_dim: int = 6) -> None:
        super().__init__()
        in_dim, hidden, out_dim = _sizes(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, (self.in_dim,), type(self).__name__)
        return self.net(x)


class NotesCNN(ConvEncoder):
    """The notes' MNIST encoder: conv(16), conv(32), fc(128), every layer followed by a ReLU.

    ``[N, 1, 28, 28] -> conv3x3(16) ReLU maxpool -> conv3x3(32) ReLU maxpool -> linear(128) ReLU
    -> [N, 128]``. It is :class:`ConvEncoder` (same layers, so the same weights for the same seed)
    plus a ReLU on the 128 features, so they are non-negative; in the notes' protocol SupCon is
    applied to them directly, with no projection head.
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


NORMS = ("batch", "layer", "group", None)


def make_norm(norm: str | None, dim: int, groups: int = 8, affine: bool = True) -> list[nn.Module]:
    """The normalization layer named ``norm`` for ``dim`` features, as a list of 0 or 1 modules.

    ``"batch"``: :class:`torch.nn.BatchNorm1d` (statistics over the batch, per feature; in training
    mode each sample's output depends on the rest of its batch); ``"layer"``:
    :class:`torch.nn.LayerNorm` (over the features of each sample); ``"group"``:
    :class:`torch.nn.GroupNorm` with ``min(groups, dim // 2)`` groups (at least two features per
    group: a group of one would be standardized to 0), reduced until it divides ``dim`` (over the
    features of each group, per sample); ``None``: nothing. Only batch norm uses batch
    statistics. ``affine=False`` drops the learned scale and shift.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    dim = check_int("dim", dim, 1)
    if norm == "batch":
        return [nn.BatchNorm1d(dim, affine=affine)]
    if norm == "layer":
        return [nn.LayerNorm(dim, elementwise_affine=affine)]
    if norm == "group":
        g = max(min(check_int("groups", groups, 1), dim // 2), 1)
        while dim % g:
            g -= 1
        return [nn.GroupNorm(g, dim, affine=affine)]
    return []


class WSLinear(nn.Linear):
    r"""Linear layer with weight standardization (Qiao et al., 2019): ``y = x Ŵ^T + b``.

    Each output unit's weight row is standardized before use,
    :math:`\hat W_{i\cdot} = (W_{i\cdot} - \mu_i) / \sqrt{\sigma_i^2 + \epsilon}`, with
    :math:`\mu_i, \sigma_i^2` the mean and (biased) variance of row :math:`i` over its
    ``in_features`` entries. It normalizes the weights, not the activations: no batch statistics,
    so each sample's output depends on that sample only. BYOL's authors (Richemond et al., 2020)
    paired it with group norm to train BYOL without batch statistics.

    Shapes: input ``[N, in_features]``, output ``[N, out_features]``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    eps : float, default 1e-5
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-5) -> None:
        in_features, out_features = _sizes(in_features=in_features, out_features=out_features)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        super().__init__(in_features, out_features, bias=bias)
        self.eps = float(eps)

    def standardized_weight(self) -> Tensor:
        """The weight ``[out_features, in_features]`` with every row at mean 0 and variance ~1."""
        w = self.weight
        mean = w.mean(dim=1, keepdim=True)
        var = w.var(dim=1, unbiased=False, keepdim=True)
        return (w - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.standardized_weight(), self.bias)


class WSConv2d(nn.Conv2d):
    r"""2-D convolution with weight standardization: :class:`WSLinear`'s rule, per output channel.

    Each output channel's kernel ``[in_channels / groups, kh, kw]`` is standardized over all its
    entries before use, :math:`\hat W_c = (W_c - \mu_c) / \sqrt{\sigma_c^2 + \epsilon}`. With group
    norm after it, a CNN has no batch statistics at all (Richemond et al., 2020, notebook 10).

    Shapes: input ``[N, in_channels, H, W]``, output as :class:`torch.nn.Conv2d`'s.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, **kwargs
        As :class:`torch.nn.Conv2d` (``padding_mode`` must stay ``"zeros"``).
    eps : float, default 1e-5
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, eps: float = 1e-5, **kwargs) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if kwargs.get("padding_mode", "zeros") != "zeros":
            raise ValueError("WSConv2d supports padding_mode='zeros' only")
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.eps = float(eps)

    def standardized_weight(self) -> Tensor:
        """The kernel ``[out_channels, in_channels / groups, kh, kw]``, each output channel at mean 0, variance ~1."""
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return (w - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)


def _linear(in_dim: int, out_dim: int, ws: bool) -> nn.Linear:
    return WSLinear(in_dim, out_dim) if ws else nn.Linear(in_dim, out_dim)


def _resolve_norm(norm, batchnorm: bool) -> str | None:
    """``norm`` if given (a name from :data:`NORMS` or None); if left at ``"default"``, from ``batchnorm``."""
    if norm == "default":
        return "batch" if check_bool("batchnorm", batchnorm) else None
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


class ProjectionHead(nn.Module):
    """MLP head ``in_dim -> hidden -> out_dim`` on which the contrastive loss is computed.

    Shapes: input ``[N, in_dim]``, output ``[N, out_dim]`` (not normalized; the losses do that).

    Parameters
    ----------
    in_dim, hidden, out_dim : int
    batchnorm : bool, default False
        Batch normalization after the hidden layer, as in the projectors of BYOL (Grill et al.,
        2020) and SimSiam (Chen and He, 2021). Shorthand for ``norm="batch"``.
    output_batchnorm : bool, default False
        Also batch normalization without learned scale and shift after the output layer, as in
        SimSiam's projector: each output dimension is then standardized over the batch, which
        keeps the projections from collapsing in training mode whatever the loss.
    norm : {"batch", "layer", "group", None}, optional
        The normalization after the hidden layer (:func:`make_norm`); overrides ``batchnorm``
        when given (``None`` then means none at all).
    weight_standardization : bool, default False
        Both linear layers are :class:`WSLinear` (with ``norm="group"``: BYOL without batch
        statistics, as in Richemond et al., 2020).
    """

    def __init__(self, in_dim: int = 128, hidden: int = 128, out_dim: int = 64, batchnorm: bool = False,
                 output_batchnorm: bool = False, norm: str | None = "default",
                 weight_standardization: bool = False) -> None:
        super().__init__()
        in_dim, hidden, out_dim = _sizes(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.norm = _resolve_norm(norm, batchnorm)
        ws = check_bool("weight_standardization", weight_standardization)
        output_norm = [nn.BatchNorm1d(out_dim, affine=False)] if check_bool("output_batchnorm", output_batchnorm) else []
        self.net = nn.Sequential(_linear(in_dim, hidden, ws), *make_norm(self.norm, hidden), nn.ReLU(),
                                 _linear(hidden, out_dim, ws), *output_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PredictionHead(nn.Module):
    """Bottleneck MLP predictor of SimSiam and BYOL: ``dim -> hidden -> dim``, ``hidden < dim``.

    It maps the projection of one view to a prediction of the projection of the other view
    (Chen and He, 2021: 2048 -> 512 -> 2048; Grill et al., 2020). The hidden layer has batch
    normalization and a ReLU, the output layer neither. Without a predictor, SimSiam and BYOL
    collapse; the bottleneck keeps it from learning the identity too easily.

    Shapes: input ``[N, dim]``, output ``[N, dim]``.

    Parameters
    ----------
    dim : int, default 64
        Size of the projections it predicts (input and output).
    hidden : int, default 32
    batchnorm : bool, default True
        BatchNorm1d after the hidden linear layer (needs batches of at least 2 in training mode).
        Shorthand for ``norm="batch"``.
    norm : {"batch", "layer", "group", None}, optional
        The normalization after the hidden layer (:func:`make_norm`); overrides ``batchnorm``
        when given.
    weight_standardization : bool, default False
        Both linear layers are :class:`WSLinear`.
    """

    def __init__(self, dim: int = 64, hidden: int = 32, batchnorm: bool = True, norm: str | None = "default",
                 weight_standardization: bool = False) -> None:
        super().__init__()
        dim, hidden = _sizes(dim=dim, hidden=hidden)
        self.dim = dim
        self.norm = _resolve_norm(norm, batchnorm)
        ws = check_bool("weight_standardization", weight_standardization)
        self.net = nn.Sequential(_linear(dim, hidden, ws), *make_norm(self.norm, hidden), nn.ReLU(),
                                 _linear(hidden, dim, ws))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, (self.dim,), type(self).__name__)
        return self.net(x)


class Prototypes(nn.Module):
    """SwAV's prototypes: K trainable unit vectors, scored against embeddings by a bias-free linear map.

    ``forward(z)`` is ``z @ weight.T``: with unit-length rows ``z`` the scores are cosine
    similarities in [-1, 1]. The rows of ``weight`` start on the unit sphere; after every
    optimizer step the training loop calls :meth:`normalize_` to put them back there (SwAV
    does the same), so a prototype cannot win samples just by growing longer.

    Shapes: input ``[N, dim]``, output ``[N, k]``; ``weight`` is ``[k, dim]``.

    Parameters
    ----------
    dim : int
        Embedding size D.
    k : int
        Number of prototypes K.
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        dim, k = _sizes(dim=dim, k=k)
        self.dim, self.k = dim, k
        self.weight = nn.Parameter(torch.randn(k, dim))
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> "Prototypes":
        """Project every prototype back onto the unit sphere, in place (no gradient recorded)."""
        self.weight.div_(torch.linalg.vector_norm(self.weight, dim=1, keepdim=True).clamp_min(1e-12))
        return self

    def forward(self, z: Tensor) -> Tensor:
        _check_input(z, (self.dim,), type(self).__name__)
        return z @ self.weight.T

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}"


class PixelFeatures(nn.Module):
    """Raw pixels as a representation: the baseline beside the random twin, with nothing to learn.

    Features are the flattened pixels in [0, 1]; with ``standardize=True`` they are standardized
    with the training digits' per-pixel mean and std (1 where a pixel never changes). The linear
    probe standardizes its inputs itself (:func:`clbook.evaluation.fit_linear_probe`), so the
    choice matters for kNN only: standardizing gives the nearly-always-blank border pixels as much
    weight as the strokes, and on MNIST it costs kNN several points.

    Parameters
    ----------
    X_train : Tensor, shape [N, 1, 28, 28]
        The digits whose statistics define the standardization.
    standardize : bool, default False
    """

    def __init__(self, X_train: Tensor, standardize: bool = False) -> None:
        super().__init__()
        flat = _images(X_train, "X_train").flatten(1)
        std = flat.std(dim=0)
        self.standardize = check_bool("standardize", standardize)
        self.register_buffer("mean", flat.mean(dim=0) if standardize else torch.zeros(flat.shape[1]))
        self.register_buffer("std", torch.where(std > 1e-8, std, torch.ones_like(std)) if standardize
                             else torch.ones(flat.shape[1]))
        self.out_dim = flat.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 1, 28, 28] -> [B, 784]``."""
        return (_images(x, "x").flatten(1) - self.mean) / self.std


# ----------------------------------------------------------------------------- notebook 12: texts


class BagOfWordsEncoder(nn.Module):
    """Small text encoder over words (CLIP's text side in notebook 12): embed each word, average, one hidden layer.

    ``ids [N, L] -> embedding(embed_dim) -> mean over the non-padding words -> ReLU -> linear -> [N, out_dim]``:
    a continuous bag of words, the simplest text encoder the CLIP paper tried. Word order is lost
    ("not slanted" and "slanted, not" are the same text); a misspelt word is the unknown word.

    Shapes: input int64 ``[N, L]`` with at least one non-padding id per row, output ``[N, out_dim]``.

    Parameters
    ----------
    vocab_size : int, default :data:`clbook.data.TEXT_VOCAB_SIZE`
        Ids are ``0`` (padding, ignored), ``1`` (a word outside the vocabulary) and up
        (:func:`clbook.data.tokenize_text`).
    out_dim : int, default 128
    embed_dim : int, default 64
    """

    def __init__(self, vocab_size: int | None = None, out_dim: int = 128, embed_dim: int = 64) -> None:
        super().__init__()
        from clbook.data import TEXT_VOCAB_SIZE

        vocab_size = TEXT_VOCAB_SIZE if vocab_size is None else vocab_size
        vocab_size, out_dim, embed_dim = _sizes(vocab_size=vocab_size, out_dim=out_dim, embed_dim=embed_dim)
        self.vocab_size, self.out_dim = vocab_size, out_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.fc = nn.Linear(embed_dim, out_dim)

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"{type(self).__name__} expects int64 word ids [N, L], got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"word ids must lie in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
        present = (ids != 0).to(self.embed.weight.dtype)  # [N, L]
        count = present.sum(dim=1, keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("every text needs at least one word (a row of ids is all padding)")
        mean = (self.embed(ids) * present[..., None]).sum(dim=1) / count  # [N, embed_dim]
        return self.fc(torch.relu(mean))


# ----------------------------------------------------------------------------- notebook 13: a small Vision Transformer


class ViTBlock(nn.Module):
    r"""One pre-norm Transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``.

    Multi-head self-attention over T tokens of width W with H heads of size ``d = W / H``: every
    token is projected to a query, a key and a value per head, and head h mixes the values with
    the weights :math:`A_h = \operatorname{softmax}(Q_h K_h^T / \sqrt d)` ``[T, T]`` (row t: how
    much token t reads from each token); the heads' outputs are concatenated and projected back
    to W. The MLP is ``W -> mlp_ratio * W -> W`` with a GELU, as in ViT (Dosovitskiy et al., 2021).

    Shapes: input and output ``[N, T, W]``. With ``keep_attention=True`` the last call's attention
    weights are kept in ``self.attention``, ``[N, H, T, T]`` (detached).
    """

    def __init__(self, width: int = 64, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        width, heads, mlp_ratio = _sizes(width=width, heads=heads, mlp_ratio=mlp_ratio)
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.width, self.heads = width, heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)  # ViT's (and DINO's) epsilon
        self.qkv = nn.Linear(width, 3 * width)  # queries, keys and values of every head, in that order
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.keep_attention = False
        self.attention: Tensor | None = None

    def attend(self, x: Tensor) -> Tensor:
        """The attention part alone (no residual): ``[N, T, W] -> [N, T, W]``."""
        n, t, w = x.shape
        # [N, T, 3W] -> [3, N, H, T, d]: one query, key and value per token and head.
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (w // self.heads) ** -0.5, dim=-1)  # [N, H, T, T]
        if self.keep_attention:
            self.attention = weights.detach()
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, w))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer for 28 x 28 digits (and smaller square crops of them).

    ``[N, 1, S, S]`` is cut into ``(S / patch)^2`` patches of ``patch x patch`` pixels; each patch
    is flattened and mapped linearly to a token of ``width`` numbers (the *patch projection*, a
    convolution with kernel and stride ``patch``: the same linear map on every patch). A learned
    class token is put in front, a learned position embedding is added to every token, and
    ``depth`` :class:`ViTBlock` s let every token attend to every other. The features are the
    class token's output after a final layer norm, ``[N, width]``.

    The position embedding is learned for the 28 x 28 grid (4 x 4 patches of 7 pixels). A smaller
    crop (DINO's local crops, e.g. 14 x 14: 2 x 2 patches) gets the grid's embeddings resized by
    bicubic interpolation, as DINO's ViT does; the class token's embedding is used as it is.

    Shapes: input ``[N, 1, S, S]`` with ``S`` a multiple of ``patch``, at most ``image_size``
    (uint8 divided by 255); output ``[N, width]``. :meth:`class_attention` gives the class
    token's attention over the patches, per head.

    Parameters
    ----------
    patch : int, default 7
    width : int, default 64
    depth : int, default 4
    heads : int, default 4
    mlp_ratio : int, default 2
    image_size : int, default 28
        Side of the grid the position embedding is learned for.
    freeze_patch_projection : bool, default False
        Keep the random patch projection fixed (``requires_grad=False``): MoCo v3's remedy for
        its training instability (Chen, Xie and He, 2021).
    """

    def __init__(self, patch: int = 7, width: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2,
                 image_size: int = 28, freeze_patch_projection: bool = False) -> None:
        super().__init__()
        patch, width, depth, image_size = _sizes(patch=patch, width=width, depth=depth, image_size=image_size)
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        self.patch, self.width, self.image_size, self.out_dim = patch, width, image_size, width
        self.grid = image_size // patch
        self.patch_projection = nn.Conv2d(1, width, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, 1 + self.grid**2, width))
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.frozen_patch_projection = check_bool("freeze_patch_projection", freeze_patch_projection)
        self.patch_projection.requires_grad_(not self.frozen_patch_projection)

    def _check(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} expects square images [N, 1, S, S], got {shape}")
        s = x.shape[2]
        if s % self.patch or not self.patch <= s <= self.image_size:
            raise ValueError(f"{name} expects a side S that is a multiple of {self.patch} up to {self.image_size}, "
                             f"got {s}")
        return check_images(f"{name} input", x)

    def position_embedding(self, grid: int) -> Tensor:
        """Position embeddings ``[1, 1 + grid^2, width]`` for a ``grid x grid`` patch grid (interpolated if smaller)."""
        if grid == self.grid:
            return self.position
        cls, patches = self.position[:, :1], self.position[:, 1:]
        patches = patches.reshape(1, self.grid, self.grid, self.width).permute(0, 3, 1, 2)  # [1, W, g, g]
        patches = nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, self.width)], dim=1)

    def tokens(self, x: Tensor) -> Tensor:
        """The input tokens ``[N, 1 + P, width]``: the class token, then the P patches, with positions."""
        x = self._check(x)
        patches = self.patch_projection(x).flatten(2).transpose(1, 2)  # [N, P, W], patches row by row
        grid = x.shape[2] // self.patch
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), patches], dim=1)
        return tokens + self.position_embedding(grid)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t[:, 0])

    @torch.no_grad()
    def class_attention(self, x: Tensor, block: int = -1) -> Tensor:
        """How much the class token attends to each patch, per head, in ``block`` (default the last).

        Returns ``[N, heads, g, g]`` (``g = S / patch``): row ``[0]`` of each head's attention
        weights without the class token's weight on itself, as a patch grid; each map sums to at
        most 1. Computed in eval mode without gradient; the training mode is restored after.
        """
        chosen = self.blocks[block]
        mode, chosen.keep_attention = self.training, True
        self.eval()
        try:
            self(x)
            weights = chosen.attention
        finally:
            chosen.keep_attention, chosen.attention = False, None
            self.train(mode)
        grid = x.shape[2] // self.patch
        return weights[:, :, 0, 1:].reshape(len(x), -1, grid, grid)


class WeightNormLinear(nn.Module):
    r"""DINO's last layer: L2-normalize the input, then a weight-normalized linear map without bias.

    Every output unit k has the weight :math:`w_k = g_k\, v_k / \lVert v_k \rVert` (weight
    normalization, Salimans and Kingma, 2016): the direction :math:`v_k` and the length
    :math:`g_k` are separate parameters. DINO fixes :math:`g_k = 1` (``norm_last_layer=True``):
    the outputs are then cosines between the normalized input and K unit vectors, in [-1, 1], like
    SwAV's prototype scores; the paper found this steadies training.

    Parameters
    ----------
    in_dim : int
        The bottleneck size (the projection head's output).
    out_dim : int
        K, the number of outputs the softmax is taken over.
    norm_last_layer : bool, default True
        Keep every :math:`g_k` at 1 (not trained).

    Shapes: input ``[N, in_dim]``, output ``[N, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, norm_last_layer: bool = True) -> None:
        super().__init__()
        in_dim, out_dim = _sizes(in_dim=in_dim, out_dim=out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.direction = nn.Parameter(torch.empty(out_dim, in_dim))  # v, one row per output
        nn.init.trunc_normal_(self.direction, std=0.02)
        self.length = nn.Parameter(torch.ones(out_dim, 1),  # g
                                   requires_grad=not check_bool("norm_last_layer", norm_last_layer))

    def weight(self) -> Tensor:
        """The effective weight ``[out_dim, in_dim]``: every row ``g_k v_k / ||v_k||``."""
        return self.length * self.direction / torch.linalg.vector_norm(self.direction, dim=1, keepdim=True)

    def forward(self, z: Tensor) -> Tensor:
        _check_input(z, (self.in_dim,), type(self).__name__)
        return nn.functional.linear(nn.functional.normalize(z, dim=1), self.weight())

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, trained_length={self.length.requires_grad}"


ENCODERS = {"mlp": MLPEncoder, "cnn": ConvEncoder, "fc": FCEncoder, "notes-mlp": NotesMLP, "notes-cnn": NotesCNN,
            "vit": ViT}


def make_encoder(kind: str, seed: int | None = None, **kwargs) -> nn.Module:
    """Build an encoder by name (a key of ``ENCODERS``), seeded if ``seed`` is given.

    Two calls with the same seed give identical weights, which is what makes a "random twin"
    reproducible.
    """
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder {kind!r}; choose one of {sorted(ENCODERS)}")
    if seed is None:
        return ENCODERS[kind](**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ENCODERS[kind](**kwargs)


# ----------------------------------------------------------------------------- sequences (CPC, notebook 11)


class CPCEncoder(nn.Module):
    """CPC's two networks for 1-D sequences: a strided convolutional encoder and a GRU above it.

    ``g_enc`` maps the raw sequence to one latent ``z_t`` per *frame* of ``frame`` samples: one
    ``Conv1d(kernel = stride = s)`` and a ReLU per entry ``s`` of ``strides``, then a 1x1
    convolution to ``latent_dim``. Kernel and stride are equal, so the frames do not overlap and
    ``frame = prod(strides)``: latent t sees exactly the samples ``[t * frame, (t + 1) * frame)``.
    That is deliberate: if two latents shared input samples, the positive of a prediction could
    be recognised by the noise they share, a shortcut that teaches nothing (notebook 11).
    ``g_ar`` is a one-layer GRU (batch first) that reads ``z_1 .. z_t`` and gives the context
    ``c_t``, which only the past can reach.

    Shapes: ``encode`` maps ``[N, in_channels, T]`` to ``[N, T // frame, D]`` (the last
    ``T % frame`` samples are dropped), ``context`` maps ``[N, T', D]`` to ``[N, T', C]``, and
    ``forward`` maps ``[N, in_channels, T]`` to ``[N, C]``, the context at the last frame: one vector
    per sequence, what :func:`clbook.evaluation.extract_features` and the training loop's kNN see.

    Parameters
    ----------
    in_channels : int, default 1
    hidden : int, default 64
        Channels of the strided convolutions.
    latent_dim : int, default 32
        Size D of the latents ``z_t``.
    context_dim : int, default 32
        Size C of the contexts ``c_t`` (the GRU's hidden state).
    strides : tuple of int, default (4, 8)
        Downsampling of each convolution; their product is the frame length (32 samples by default).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, latent_dim: int = 32, context_dim: int = 32,
                 strides: tuple[int, ...] = (4, 8)) -> None:
        super().__init__()
        in_channels, hidden, latent_dim, context_dim = _sizes(in_channels=in_channels, hidden=hidden,
                                                              latent_dim=latent_dim, context_dim=context_dim)
        if not isinstance(strides, (tuple, list)) or not strides:
            raise ValueError(f"strides must be a non-empty tuple of positive integers, got {strides!r}")
        strides = tuple(_sizes(**{f"strides[{i}]": s for i, s in enumerate(strides)}))
        self.in_channels, self.latent_dim, self.context_dim, self.strides = in_channels, latent_dim, context_dim, strides
        self.frame = 1
        layers: list[nn.Module] = []
        channels = in_channels
        for s in strides:
            layers += [nn.Conv1d(channels, hidden, kernel_size=s, stride=s), nn.ReLU()]
            channels, self.frame = hidden, self.frame * s
        self.genc = nn.Sequential(*layers, nn.Conv1d(channels, latent_dim, kernel_size=1))
        self.gar = nn.GRU(latent_dim, context_dim, batch_first=True)
        self.out_dim = context_dim

    def encode(self, x: Tensor) -> Tensor:
        """Latents ``z`` ``[N, T // frame, D]`` of sequences ``x`` ``[N, in_channels, T]``."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} expects a tensor input, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name} expects input of shape [N, {self.in_channels}, T], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point sequence, got dtype {x.dtype}")
        if x.shape[2] < self.frame:
            raise ValueError(f"{name} needs sequences of at least one frame ({self.frame} samples), "
                             f"got T = {x.shape[2]}")
        usable = x.shape[2] - x.shape[2] % self.frame
        return self.genc(x[:, :, :usable]).transpose(1, 2)  # [N, D, T'] -> [N, T', D]

    def context(self, z: Tensor) -> Tensor:
        """Contexts ``c`` ``[N, T', C]`` of latents ``z`` ``[N, T', D]``: ``c_t`` depends on ``z_1 .. z_t`` only."""
        if not isinstance(z, Tensor) or z.dim() != 3 or z.shape[2] != self.latent_dim or z.shape[1] == 0:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{type(self).__name__}.context expects latents of shape [N, T', {self.latent_dim}] "
                             f"with T' >= 1, got {shape}")
        return self.gar(z)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.context(self.encode(x))[:, -1]


class CPCPredictor(nn.Module):
    """CPC's prediction maps: one linear map ``W_k`` per step ``k = 1 .. steps``, without bias.

    ``W_k c_t`` predicts the latent ``z_{t+k}``; CPC scores a candidate ``z`` by ``z . W_k c_t``
    (a log-bilinear critic). The K maps are stored as one linear layer from ``context_dim`` to
    ``steps * latent_dim`` outputs, whose rows ``(k - 1) D`` to ``k D - 1`` are ``W_k``: one matrix
    product for all steps. Like a projection head, it is thrown away after pre-training.

    Shapes: input ``[..., context_dim]``, output ``[..., steps, latent_dim]``; contexts ``[N, T, C]``
    give the predictions ``[N, T, K, D]`` that :func:`clbook.losses.cpc_loss` takes.

    Parameters
    ----------
    context_dim : int, default 32
    latent_dim : int, default 32
    steps : int, default 4
        K, the farthest step predicted.
    """

    def __init__(self, context_dim: int = 32, latent_dim: int = 32, steps: int = 4) -> None:
        super().__init__()
        context_dim, latent_dim, steps = _sizes(context_dim=context_dim, latent_dim=latent_dim, steps=steps)
        self.context_dim, self.latent_dim, self.steps = context_dim, latent_dim, steps
        self.linear = nn.Linear(context_dim, steps * latent_dim, bias=False)

    def forward(self, c: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(c, Tensor) or c.dim() < 1 or c.shape[-1] != self.context_dim:
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"{name} expects input of shape [..., {self.context_dim}], got {shape}")
        return self.linear(c).unflatten(-1, (self.steps, self.latent_dim))


ENCODERS["cpc"] = CPCEncoder
