"""Integrations with other training tools, one module per tool.

Each module imports its tool (an optional extra); ``import procres`` imports none of them.

- ``tensorboard``  r_l, losses and transition errors as TensorBoard events (``procres train
  --tensorboard``, ``procres.log_norms``; ``pip install 'procrustes-resnets[tensorboard]'``)
- ``lightning``    ``NormRatioCallback`` and ``ProcrustesCallback`` for Lightning
  (``pip install 'procrustes-resnets[lightning]'``)
- ``transformers`` ``NormRatioCallback`` for Hugging Face's ``Trainer``
  (``pip install 'procrustes-resnets[transformers]'``)

Uses spectral, diagnostics and constraints; never imports models, training or reports (the
training loop uses ``tensorboard``).
"""
