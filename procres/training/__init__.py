"""Training: CIFAR-10/100 or the digits, the paper's recipes, checkpoints that survive a kill, DDP.

- ``config``       ``TrainConfig``, its flags, what a resume may change
- ``recipes``      the named recipes and the learning-rate schedule ``lr_at``
- ``cifar``        the official CIFAR archives, read (allow-list unpickler) and written (tests)
- ``data``         data sets, device-resident batches and augmentation
- ``checkpoint``   the training state, saved atomically and read with ``weights_only``
- ``run``          one run's parts (model, optimizer, loaders, hook, recorder)
- ``loop``         ``train()``: the loop, epoch by epoch, and ``train_seeds``
- ``graphs``       the whole training step as one CUDA graph
- ``distributed``  process groups and reductions under ``torchrun``
- ``evaluate``     evaluation and the end-of-epoch norm probe
- ``log``          ``train.log`` and the per-epoch table

Uses spectral, models, diagnostics, constraints and integrations (TensorBoard); never reports.
"""
