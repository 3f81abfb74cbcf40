"""One convolution as a linear operator: its exact singular values and the Procrustes projection.

- ``operator``    ``ConvOperator``: a conv's arguments, forward and adjoint, dense matrix
- ``symbol``      per-frequency (polyphase) matrices of a kernel, and back to a kernel
- ``spectra``     exact circular spectra, zero-padding extremes (dense or Lanczos), the target rule
- ``lanczos``     the one Lanczos iteration (also used for Jacobian spectra)
- ``polar``       the polar factor (SVD, eigh, converged Newton-Schulz), per frequency too
- ``projection``  the Procrustes projection of a conv onto norm-preserving kernels
- ``clipping``    singular-value clipping of a conv or Linear operator (Sedghi et al.)
- ``faithful``    the authors' released projection, quirks included
- ``device``      the projection as device-side matmuls with no host syncs (CUDA graphs)
- ``threads``     LAPACK calls on one thread where more only cost (small batched decompositions)

Knows no networks: imports only torch, ``procres.errors`` and itself.
"""
