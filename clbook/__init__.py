"""clbook: companion package of an executable course on contrastive learning.

One module per concept, and three packages with one file per loss family (``losses``), per method
(``methods``, whose ``REGISTRY`` names them all) and per notebook (``exercises``). Imports point one
way: ``experiments``, ``notes`` and ``launch`` use ``training`` (the one loop), which uses
``methods``, which use ``losses``, ``encoders``, ``data``, ``memory``, ``metrics``, ``sinkhorn``;
``evaluation`` scores frozen features; ``checks``, ``runtime`` and ``distributed`` sit at the bottom.
``student`` writes the student edition.
"""

from clbook.losses import (
    InfoNCELoss,
    MarginContrastiveLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
    info_nce_loss,
    margin_contrastive_loss,
    nt_xent_loss,
    supcon_loss,
    triplet_margin_loss,
)

__version__ = "0.1.0"
