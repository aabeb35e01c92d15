"""Evaluation: folds (``splits``), cross-validation (``crossval``), comparison on identical folds (``compare``),
metrics on saved predictions (``metrics``), statistics across (seed, fold) (``stats``) and the HTML report
(``report``). The rule: a metric is computed from predictions in ``metrics``; a number computed across folds is
``stats``; everything that trains a model on folds is ``crossval`` or ``compare``."""
