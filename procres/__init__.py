"""procres: norm-preserving deep networks (Zaeemzadeh, Rahnavard & Shah, TPAMI 2020).

The public API, one line per name: ``name -> module``. Names load lazily so that
``import procres`` stays fast and imports no torch (the CLI's ``--help`` imports torch once, ~1.5 s,
for the ``train`` options' projection methods).
"""

__version__ = "0.1.0"

_API = {
    # spectral: singular values of convolution operators
    "conv_singular_values": "spectral.spectra",
    "conv_operator_norm": "spectral.spectra",
    "conv_min_singular_value": "spectral.spectra",
    "conv_matrix": "spectral.spectra",
    "conv_extremes": "spectral.spectra",
    "norm_preserving_target": "spectral.spectra",
    "spectrum_stats": "spectral.spectra",
    # units and convs of any model; `procres inspect` in one call
    "find_units": "diagnostics.units",
    "units_by_name": "diagnostics.units",
    "find_convs": "diagnostics.convs",
    "conv_spectra": "diagnostics.convs",
    "inspect_model": "diagnostics.inspection",
    # procrustes: polar factor and the norm-preserving projection
    "polar": "spectral.polar",
    "project_conv_": "spectral.projection",
    "project_kernel": "spectral.projection",
    "ProjectionReport": "spectral.projection",
    "OperatorReport": "spectral.projection",
    # regularisers: singular-value clipping and exact spectral normalisation
    "clip_singular_values_": "spectral.clipping",
    "ClippingReport": "spectral.clipping",
    "spectral_norm": "constraints.spectral_norm",
    "ProcrustesHook": "constraints.hooks",
    "register_procrustes_hook": "constraints.hooks",
    "attach_procrustes": "constraints.hooks",
    "attach_clipping": "constraints.hooks",
    "StepHook": "constraints.hooks",
    "select_layers": "diagnostics.convs",
    # models
    "create_model": "models.registry",
    "list_models": "models.registry",
    "register_model": "models.registry",
    "resnet": "models.resnet",
    "preresnet": "models.preact",
    "procresnet": "models.procresnet",
    "plain": "models.resnet",
    "plainpre": "models.preact",
    "plainproc": "models.procresnet",
    "prenorm_transformer": "models.transformer",
    "postnorm_transformer": "models.transformer",
    # diagnostics: norm ratios during training; jacobian: Jacobian spectra and the bounds
    "NormRecorder": "diagnostics.recorder",
    "depth_study": "reports.study",
    "log_norms": "integrations.tensorboard",
    "jacobian_singular_values": "diagnostics.jacobian",
    "check_bounds": "diagnostics.jacobian",
    "JacobianSpectrum": "diagnostics.jacobian",
    # data, config, training
    "load_dataset": "training.data",
    "DeviceLoader": "training.data",
    "DataSplits": "training.data",
    "DatasetError": "training.cifar",
    "TrainConfig": "training.config",
    "RECIPES": "training.recipes",
    "lr_at": "training.recipes",
    "train": "training.loop",
    "train_seeds": "training.loop",
    "save_checkpoint": "training.checkpoint",
    "load_checkpoint": "training.checkpoint",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'procres' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"procres.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
