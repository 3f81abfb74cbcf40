"""Keeping chosen layers of any model norm-preserving while it trains.

- ``hooks``          optimizer step hooks: the Procrustes projection after steps (``attach_procrustes``)
- ``spectral_norm``  a parametrization that divides a layer's weight by its operator's norm

Uses ``procres.spectral`` (the math) and ``procres.diagnostics`` (which layers, at what size);
never imports models, training or reports.
"""
