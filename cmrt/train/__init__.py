"""Training: EDM teacher, consistency training (iCT), consistency distillation, consistency decoders,
the shared loop (EMA, checkpoints, exact resume, DDP) and ``cmrt eval``. Needs the ``train`` extra
(scikit-learn) for its data sets and metrics."""
