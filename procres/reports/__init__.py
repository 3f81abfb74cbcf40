"""What runs leave on disk, read back: figures, verdicts on the paper's claims, reports, the demo.

- ``runs``        reading run folders (torch-free)
- ``plots``       figures from run files only
- ``verdicts``    the paper's claims checked on measured numbers, thresholds in one table
- ``report``      the demo's ``report.md``
- ``inspection``  ``procres inspect``'s ``inspect.json`` and figures
- ``demo``        the one-command demo
- ``reproduce``   the paper's experiments as ready commands
- ``study``       ``procres study``: the depth study of any model family, its JSON, figure and verdict

Reads files and calls every part below it; imported by the command line and by the top-level
``procres`` names that live here (``procres.depth_study``), never by the parts below.
"""
