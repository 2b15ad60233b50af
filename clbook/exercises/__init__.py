r"""Checkers for the notebooks' exercises: run the learner's function, compare, give a short verdict.

Every checkable exercise of the course has one checker, an :class:`Exercise`. Call it on your
function and it prints one short verdict: ``[pass] 02.1 NT-Xent from scratch: 8 inputs checked,
all correct.``, or the first input that failed with a hint naming the notebook section to reread,
or ``not attempted yet`` while the function still raises ``NotImplementedError``. A notebook
imports its checkers from here::

    from clbook.exercises import check_nt_xent
    check_nt_xent(my_nt_xent)

Where things are:

* :mod:`clbook.exercises.core`: the checker itself (:class:`Case`, :class:`Mistake`,
  :class:`Verdict`, :class:`Exercise`), the registry :data:`~clbook.exercises.core.EXERCISES`
  (key to checker) and :func:`exercise`, which creates a checker and registers it;
* ``clbook.exercises.nbNN_<topic>``: the checkers of notebook NN, each with its reference, its
  cases and its registered mistakes (the typical wrong answers and their hints):

========  =======================================  ==================  ===========================================
key       checker                                  module              the learner writes
========  =======================================  ==================  ===========================================
01.1      :data:`.check_drlim_other_convention`    nb01_margin         DrLIM's loss with ``y = 1`` for similar
01.2      :data:`.check_drlim_force`               nb01_margin         the force ``-dE/dD`` of one pair
01.3      :data:`.check_triplet_loss`              nb01_margin         the triplet loss
02.1      :data:`.check_nt_xent`                   nb02_nt_xent        NT-Xent, stable at tau 0.01 and float16
02.2      :data:`.check_dropped_diagonal_targets`  nb02_nt_xent        cross-entropy targets, diagonal dropped
02.3      :data:`.check_anchor_gradient`           nb02_nt_xent        the gradient of one anchor's loss
03.1      :data:`.check_supcon_out`                nb03_supcon         SupCon L_out, anchors without positives out
03.2      :data:`.check_supcon_in`                 nb03_supcon         SupCon L_in (the mean inside the log)
03.3      :data:`.check_supcon_pair_weighted`      nb03_supcon         the notes' pair-weighted form
04.1      :data:`.check_standardize`               nb04_iris           standardize with training statistics only
04.2      :data:`.check_choose_k`                  nb04_iris           kNN's k chosen on validation data
05.1      :data:`.check_knn_predict`               nb05_mnist          kNN by cosine similarity, majority vote
05.2      :data:`.check_probe_step`                nb05_mnist          one gradient step of a linear probe
06.1      :data:`.check_em_step`                   nb06_clustering_em  one EM iteration (E-step, then M-step)
06.2      :data:`.check_gmm_bic`                   nb06_clustering_em  the BIC of a fitted mixture
06.3      :data:`.check_partition_weighted_loss`   nb06_clustering_em  SupCon with a weighted log-partition term
07.1      :data:`.check_info_nce_queue`            nb07_moco           InfoNCE with a queue, no gradient into it
07.2      :data:`.check_enqueue`                   nb07_moco           the queue's FIFO enqueue, with wrap-around
07.3      :data:`.check_ema_update`                nb07_moco           the momentum (EMA) update
08.1      :data:`.check_alignment_uniformity`      nb08_collapse       alignment and uniformity, in log space
08.2      :data:`.check_simsiam_loss`              nb08_collapse       SimSiam's symmetric loss, stop-gradient
08.3      :data:`.check_effective_rank`            nb08_collapse       the effective rank (RankMe)
09.1      :data:`.check_sinkhorn`                  nb09_swav           Sinkhorn-Knopp in log space
09.2      :data:`.check_swav_loss`                 nb09_swav           SwAV's swapped prediction
10.1      :data:`.check_weight_standardization`    nb10_batchnorm      weight standardization of a weight matrix
10.2      :data:`.check_group_norm`                nb10_batchnorm      group norm, per sample, no batch statistics
10.3      :data:`.check_predictor_gradient`        nb10_batchnorm      the predictor's gradient in the linear toy
11.1      :data:`.check_cpc_step_loss`             nb11_cpc            CPC's InfoNCE of one step, batch negatives
11.2      :data:`.check_cpc_mi_bound`              nb11_cpc            the bound log N_k - L_k of every step
11.3      :data:`.check_cpc_sequence_loss`         nb11_cpc            the same, negatives from one sequence only
12.1      :data:`.check_multiview_loss`            nb12_cmc_clip       CMC's loss, core pairs or the full graph
12.2      :data:`.check_clip_loss`                 nb12_cmc_clip       CLIP's symmetric loss with a learned scale
12.3      :data:`.check_prompt_ensemble`           nb12_cmc_clip       zero-shot classes from a prompt ensemble
13.1      :data:`.check_patchify`                  nb13_vit            a ViT's patches, row by row
13.2      :data:`.check_dino_loss`                 nb13_vit            DINO's loss, centered and sharpened teacher
========  =======================================  ==================  ===========================================

To add a checker to notebook NN, write it in ``clbook/exercises/nbNN_<topic>.py`` (a new notebook
gets a new module of that name) with :func:`exercise` and a key ``"NN.k"``; add its name to that
module's ``__all__`` and to the imports and ``__all__`` below; then give the notebook an exercise
cell that starts with ``# Exercise NN.k`` (see :mod:`clbook.student`). The tests run every
registered checker on its reference, on each of its mistakes and on a stub.

An exercise holds its own rules: ``forbidden=("clbook.losses.nt_xent_loss", "stable_nt_xent")``
puts the library functions the learner is asked to write, and the notebook's own finished version,
out of reach while the learner's function runs (the checker computes its expected values first);
``no_autograd=True`` runs the function under ``torch.no_grad()`` on inputs that need no gradient.

The checkers import what they compare with (``clbook.losses``, ``clbook.metrics``,
``clbook.cluster``, ``clbook.evaluation``, ``clbook.memory``); nothing in ``clbook`` imports
``clbook.exercises``.
"""

from __future__ import annotations

from clbook.exercises.core import EXERCISES, Case, Exercise, Mistake, Verdict, exercise
from clbook.exercises.nb01_margin import check_drlim_other_convention, check_drlim_force, check_triplet_loss
from clbook.exercises.nb02_nt_xent import check_nt_xent, check_dropped_diagonal_targets, check_anchor_gradient
from clbook.exercises.nb03_supcon import check_supcon_out, check_supcon_in, check_supcon_pair_weighted
from clbook.exercises.nb04_iris import check_standardize, check_choose_k
from clbook.exercises.nb05_mnist import check_knn_predict, check_probe_step
from clbook.exercises.nb06_clustering_em import check_em_step, check_gmm_bic, check_partition_weighted_loss
from clbook.exercises.nb07_moco import check_info_nce_queue, check_enqueue, check_ema_update
from clbook.exercises.nb08_collapse import check_alignment_uniformity, check_simsiam_loss, check_effective_rank
from clbook.exercises.nb09_swav import check_sinkhorn, check_swav_loss
from clbook.exercises.nb10_batchnorm import check_weight_standardization, check_group_norm, check_predictor_gradient
from clbook.exercises.nb11_cpc import check_cpc_mi_bound, check_cpc_sequence_loss, check_cpc_step_loss
from clbook.exercises.nb12_cmc_clip import check_multiview_loss, check_clip_loss, check_prompt_ensemble
from clbook.exercises.nb13_vit import check_patchify, check_dino_loss

__all__ = [
    "Case",
    "Mistake",
    "Verdict",
    "Exercise",
    "exercise",
    "EXERCISES",
    "check_drlim_other_convention",
    "check_drlim_force",
    "check_triplet_loss",
    "check_nt_xent",
    "check_dropped_diagonal_targets",
    "check_anchor_gradient",
    "check_supcon_out",
    "check_supcon_in",
    "check_supcon_pair_weighted",
    "check_standardize",
    "check_choose_k",
    "check_knn_predict",
    "check_probe_step",
    "check_em_step",
    "check_gmm_bic",
    "check_partition_weighted_loss",
    "check_info_nce_queue",
    "check_enqueue",
    "check_ema_update",
    "check_alignment_uniformity",
    "check_simsiam_loss",
    "check_effective_rank",
    "check_sinkhorn",
    "check_swav_loss",
    "check_weight_standardization",
    "check_group_norm",
    "check_predictor_gradient",
    "check_cpc_step_loss",
    "check_cpc_mi_bound",
    "check_cpc_sequence_loss",
    "check_multiview_loss",
    "check_clip_loss",
    "check_prompt_ensemble",
    "check_patchify",
    "check_dino_loss",
]
