"""Integrations with other training frameworks, one module per framework.

Each module imports its framework (an optional extra); ``import procres`` imports none of them.

- :mod:`procres.integrations.lightning`  ``NormRatioCallback`` and ``ProcrustesCallback`` for
  Lightning (``pip install 'procrustes-resnets[lightning]'``).
"""
