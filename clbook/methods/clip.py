"""CLIP (Radford et al., 2021): images and their texts, two encoders, a symmetric InfoNCE with a learned scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_bool, check_real
from clbook.losses import clip_loss
from clbook.methods.base import Method, output_dim

__all__ = ["CLIP"]


class CLIP(Method):
    """CLIP: the loop's encoder and head embed the images; the method's text encoder and projection, their texts.

    Per step, for the batch's images (the loop passes them, augmented or not: ``n_views = 1``) and
    the texts of the same samples, looked up by their ``index`` in ``captions``:

    * image embeddings ``head(encoder(x))``: ``head`` is CLIP's image projection :math:`W_i`;
    * text embeddings ``text_projection(text_encoder(captions[index]))`` (:math:`W_t`);
    * loss :func:`clbook.losses.clip_loss` with the logit scale ``exp(log_scale)``, learned (through
      the parameter ``scaled_log_scale``, see ``scale_speed``), starting at ``1 / init_temperature``
      and clipped at ``max_scale`` after every step, as in the paper.

    Parameters
    ----------
    captions : Tensor, int64, shape [N, L] or [N, C, L]
        Word ids (:func:`clbook.data.tokenize_text`) of the training samples' texts, row i for
        sample i of the loop's ``X``. With C texts per sample, each step draws one of them per sample
        (from torch's global generator).
    text_encoder : nn.Module, optional
        Ids ``[B, L]`` -> features ``[B, out_dim]``, with an ``out_dim`` attribute. Default
        :class:`clbook.encoders.BagOfWordsEncoder`, built with fresh weights.
    init_temperature : float, default 0.07
        CLIP's initial temperature, i.e. a logit scale of about 14.3.
    max_scale : float, default 100
    learn_scale : bool, default True
        ``False`` keeps the scale at ``1 / init_temperature`` (exercise 3 of notebook 12).
    scale_speed : float, default 1
        The parameter is ``log_scale / scale_speed``: Adam moves a parameter by about its learning
        rate per step, so the log of the scale moves about ``scale_speed`` times as fast. CLIP's
        hundreds of thousands of steps need no more than 1; a run of a hundred steps does.

    Notes
    -----
    Logged per epoch (``History.metrics``): ``logit_scale`` at the end of the epoch. The scale after
    every step is appended to the list ``scale_trace``.
    """

    n_views = 1
    needs_augment = False

    def __init__(self, captions: Tensor, text_encoder: nn.Module | None = None, init_temperature: float = 0.07,
                 max_scale: float = 100.0, learn_scale: bool = True, scale_speed: float = 1.0) -> None:
        super().__init__()
        if not isinstance(captions, Tensor) or captions.dtype != torch.int64 or captions.dim() not in (2, 3) \
                or 0 in captions.shape:
            raise ValueError("captions must be int64 word ids [N, L] or [N, C, L] (clbook.data.tokenize_text), "
                             f"got {getattr(captions, 'dtype', type(captions).__name__)} "
                             f"{tuple(getattr(captions, 'shape', ()))}")
        init_temperature = check_real("init_temperature", init_temperature)
        self.max_scale = check_real("max_scale", max_scale, minimum=1.0 / init_temperature, strict=False)
        self.learn_scale = check_bool("learn_scale", learn_scale)
        # Not in state_dict: the texts are data, not weights (a checkpoint stays small).
        self.register_buffer("captions", captions.detach().clone(), persistent=False)
        if text_encoder is None:
            from clbook.encoders import BagOfWordsEncoder

            text_encoder = BagOfWordsEncoder()
        if not isinstance(getattr(text_encoder, "out_dim", None), int):
            raise ValueError("text_encoder needs an integer out_dim attribute (the size of its features)")
        self.text_encoder = text_encoder
        self.text_projection: nn.Linear | None = None
        self.scale_speed = check_real("scale_speed", scale_speed)
        self.scaled_log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature) / self.scale_speed),
                                             requires_grad=self.learn_scale)
        self.scale_trace: list[float] = []

    @property
    def logit_scale(self) -> Tensor:
        """``exp(log_scale)``, the multiplier of the cosines (1 / temperature), a 0-d tensor with its gradient."""
        return (self.scaled_log_scale * self.scale_speed).exp()

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        if self.num_samples is not None and self.num_samples != self.captions.shape[0]:
            raise ValueError(f"captions has texts for {self.captions.shape[0]} samples, but the loop trains on "
                             f"{self.num_samples}: give one row of captions per training sample")
        self.text_projection = nn.Linear(self.text_encoder.out_dim, output_dim(head), bias=False)

    def encode_text(self, ids: Tensor) -> Tensor:
        """Text embeddings ``[M, D]`` (projected, not normalized) of word ids ``[M, L]``."""
        if self.text_projection is None:
            raise RuntimeError("CLIP.setup(encoder, head) must run first (pretrain calls it)")
        return self.text_projection(self.text_encoder(ids))

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        ids = self.captions[index.to(self.captions.device)]  # [B, L] or [B, C, L]
        if ids.dim() == 3:  # one of the C texts of each sample, drawn afresh every step
            pick = torch.randint(ids.shape[1], (ids.shape[0],)).to(ids.device)
            ids = ids[torch.arange(ids.shape[0], device=ids.device), pick]
        image_emb = head(encoder(views[0]))
        text_emb = self.encode_text(ids)
        return clip_loss(image_emb, text_emb, self.logit_scale, gather_distributed=self.gather)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        with torch.no_grad():
            self.scaled_log_scale.clamp_(max=math.log(self.max_scale) / self.scale_speed)
        self.scale_trace.append(float(self.logit_scale.detach()))

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {"logit_scale": float(self.logit_scale.detach())}

    @torch.no_grad()
    def zero_shot_classifier(self, prompts: list[Tensor]) -> Tensor:
        """Class embeddings ``[K, D]`` (unit rows) from prompts: the mean of each class's normalized prompt embeddings.

        ``prompts[k]`` is a tensor of word ids ``[P_k, L]``: the P_k prompts of class k (one
        prompt, or an ensemble), whose unit embeddings are averaged and normalized again, as CLIP does.
        """
        rows = []
        was = self.training
        self.eval()
        try:
            for ids in prompts:
                emb = F.normalize(self.encode_text(ids.to(self.scaled_log_scale.device)), dim=1)
                rows.append(F.normalize(emb.mean(dim=0), dim=0))
        finally:
            self.train(was)
        return torch.stack(rows)
