"""The model zoo: CIFAR ResNets, pre-activation ResNets, Procrustes ResNets and their plain twins.

- ``net``         ``CifarNet`` (stem -> blocks -> head), unit kinds, the shared argument checks
- ``resnet``      He 2016a basic-block ResNet and ``plain``
- ``preact``      He 2016b pre-activation bottleneck ResNet and ``plainpre``
- ``procresnet``  Procrustes ResNet (transitions projected) and ``plainproc``
- ``registry``    ``register_model`` / ``create_model`` / ``list_models``
- ``factory``     MODEL strings of the command line (a name or ``pkg.mod:factory``), checkpoints

Uses ``procres.spectral`` (the projection at construction); never imports diagnostics, training
or reports.
"""
