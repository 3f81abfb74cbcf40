"""procres: norm-preserving deep networks (Zaeemzadeh, Rahnavard & Shah, TPAMI 2020).

The public API, one line per name: ``name -> module``. Names load lazily so that
``import procres`` (and the CLI's ``--help``) stays fast.
"""

__version__ = "0.1.0"

_API = {
    # spectral: singular values of convolution operators
    "conv_singular_values": "spectral",
    "conv_operator_norm": "spectral",
    "conv_min_singular_value": "spectral",
    "conv_matrix": "spectral",
    "conv_extremes": "spectral",
    "norm_preserving_target": "spectral",
    "spectrum_stats": "spectral",
    # units and convs of any model; `procres inspect` in one call
    "find_units": "units",
    "units_by_name": "units",
    "find_convs": "convs",
    "conv_spectra": "convs",
    "inspect_model": "inspection",
    # procrustes: polar factor and the norm-preserving projection
    "polar": "procrustes",
    "project_conv_": "procrustes",
    "project_kernel": "procrustes",
    "ProjectionReport": "procrustes",
    "ProcrustesHook": "procrustes",
    "register_procrustes_hook": "procrustes",
    "attach_procrustes": "procrustes",
    # models
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "resnet": "models",
    "preresnet": "models",
    "procresnet": "models",
    "plain": "models",
    "plainpre": "models",
    "plainproc": "models",
    # diagnostics: norm ratios during training; jacobian: Jacobian spectra and the bounds
    "NormRecorder": "diagnostics",
    "depth_study": "study",
    "log_norms": "tensorboard",
    "jacobian_singular_values": "jacobian",
    "check_bounds": "jacobian",
    "JacobianSpectrum": "jacobian",
    # data, config, training
    "load_dataset": "data",
    "DeviceLoader": "data",
    "DataSplits": "data",
    "DatasetError": "data",
    "TrainConfig": "config",
    "RECIPES": "config",
    "lr_at": "config",
    "train": "train",
    "train_seeds": "train",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
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
