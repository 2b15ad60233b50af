"""clbook: companion package of an executable course on contrastive learning.

Modules, one per concept: ``losses``, ``memory``, ``encoders``, ``data``, ``training``, ``methods``,
``experiments``, ``viz``, ``cluster``; ``exercises`` checks the notebooks' exercises, ``student``
writes the student edition and ``launch`` runs ``python -m clbook pretrain``.
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
