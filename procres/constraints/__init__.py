"""Keeping chosen layers of any model norm-preserving while it trains.

- ``hooks``          the optimizer step hook: the Procrustes projection or singular-value clipping
                     after steps (``attach_procrustes``, ``attach_clipping``)
- ``spectral_norm``  a parametrization that divides a layer's weight by its operator's norm

Uses ``procres.spectral`` (the math) and ``procres.diagnostics`` (which layers, at what size);
never imports models, training or reports.
"""
