"""clbook: companion package of an executable course on contrastive learning.

Modules, one per concept: ``losses``, ``encoders``, ``data``, ``training``, ``viz``, ``cluster``;
``exercises`` checks the notebooks' exercises and ``student`` writes the student edition.
"""

from clbook.losses import (
    MarginContrastiveLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
    margin_contrastive_loss,
    nt_xent_loss,
    supcon_loss,
    triplet_margin_loss,
)

__version__ = "0.1.0"
