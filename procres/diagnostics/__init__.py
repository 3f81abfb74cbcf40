"""The paper's theory, measured on any ``nn.Module``: gradient-norm ratios, units, conv spectra.

- ``recorder``    ``NormRecorder``: r_l = ||dE/dx_l|| / ||dE/dx_{l+1}|| per unit during training
- ``units``       residual units of any model, by ``torch.fx`` (``tracing``) or by name (``names``)
- ``structure``   the units by structure and one example forward, where tracing fails or finds none
- ``example``     one example forward pass: a model's failure as a sentence, modules' first inputs,
                  how a layer's input and output are read
- ``convs``       every conv at the input size it sees, and its spectra; ``select_layers``: the convs
                  and Linear layers a regulariser acts on
- ``jacobian``    Jacobian spectra of a unit and the bounds sigma_min(J) <= r_l <= sigma_max(J)
- ``ratios``      statistics of ratios (spread, overflow), torch-free
- ``study``       the depth study: r_l at several depths, at init and after a few steps
- ``inspection``  ``procres inspect`` in one call

Uses ``procres.spectral``; never imports models, training, reports or a framework.
"""
