"""Contrastive losses: DrLIM margin loss, triplet loss, NT-Xent (SimCLR), SupCon and InfoNCE (MoCo);
the losses without negatives of SimSiam (negative cosine) and BYOL (normalized MSE); SwAV's
swapped prediction; the losses between views of different kinds, CMC's and CLIP's; CPC's
InfoNCE over predicted future latents; and DINO's self-distillation.

One file per loss family, each opening with the plain form of its loss (the formula, the shapes,
the computation that runs on an ordinary batch), its fast path beside it and its ``nn.Module``
wrapper after it: ``margin`` (DrLIM, triplet), ``nt_xent``, ``supcon``, ``info_nce``,
``no_negatives`` (negative cosine, normalized MSE), ``swav``, ``multiview`` (CMC), ``clip`` and
``cpc`` (which calls ``info_nce_loss`` once per prediction step) and ``dino``. Every public name is
re-exported here: ``from clbook.losses import nt_xent_loss``. The machinery is private:
``_checks`` (input checks, the float32 rule, norms, the logits of the softmax losses) and
``_tiled`` (the tiled log-denominators, with the thresholds that decide when a loss tiles); the
rows of every process come from :mod:`clbook.distributed`.

Conventions shared by every function here
-----------------------------------------
* A batch is a tensor whose first dimension indexes samples: ``[N, D]`` for N embeddings of
  size D, or ``[N, V, D]`` for V views of each of N samples (as in the SupContrast reference).
* Every loss returns a scalar: the mean over the anchors (or pairs, or triplets) that have a
  defined loss.
* Softmax losses are computed in log space (log-sum-exp over the row, diagonal excluded), so
  they stay finite at temperature 0.01 and for large unnormalized inputs.
* Half-precision inputs (float16, bfloat16) are computed in float32 and the loss is returned in
  the input's dtype. Under ``torch.autocast`` this does not hold by itself: autocast recasts the
  matrix products inside a loss to its low-precision dtype whatever the inputs' dtype, so call a
  loss with autocast disabled (``with torch.autocast(device_type, enabled=False):``) to get float32
  logits (notebook 02 measures the difference). Every loss starts with
  ``(x1, x2), dtype = _to_float32(x1, x2)`` and ends with ``return _result(loss, dtype, name)``
  (both from ``clbook.losses._checks``). ``_to_float32`` upcasts only half-precision tensors
  (float32 and float64 pass untouched, at no cost); ``_result`` raises ``ValueError`` instead of
  returning inf or NaN when a value overflowed (inputs near float32's range, a tiny temperature)
  or does not fit the returned dtype. New losses follow the same two lines.
* Numbers (``temperature``, ``margin``) may be Python or NumPy numbers or 0-d tensors; a 0-d tensor
  that requires grad (a learnable temperature) keeps its gradient. No function changes a tensor it
  was given.
* Bad input raises ``ValueError`` naming the problem; nothing here returns a silent NaN.
"""

from clbook.losses.cpc import CPCLoss, cpc_logits, cpc_loss
from clbook.losses.info_nce import InfoNCELoss, info_nce_loss
from clbook.losses.margin import MarginContrastiveLoss, TripletMarginLoss, margin_contrastive_loss, triplet_margin_loss
from clbook.losses.no_negatives import negative_cosine_loss, normalized_mse_loss
from clbook.losses.nt_xent import NTXentLoss, nt_xent_loss
from clbook.losses.supcon import SupConLoss, supcon_loss
from clbook.losses.swav import swav_loss, swav_multicrop_loss
from clbook.losses.multiview import multiview_info_nce
from clbook.losses.clip import clip_loss
from clbook.losses.dino import DINOLoss, dino_loss, teacher_probabilities

__all__ = [
    "margin_contrastive_loss",
    "triplet_margin_loss",
    "nt_xent_loss",
    "supcon_loss",
    "info_nce_loss",
    "negative_cosine_loss",
    "normalized_mse_loss",
    "swav_loss",
    "swav_multicrop_loss",
    "cpc_loss",
    "cpc_logits",
    "multiview_info_nce",
    "clip_loss",
    "dino_loss",
    "teacher_probabilities",
    "MarginContrastiveLoss",
    "TripletMarginLoss",
    "NTXentLoss",
    "SupConLoss",
    "InfoNCELoss",
    "CPCLoss",
    "DINOLoss",
]
