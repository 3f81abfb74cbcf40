import pytest

from run_files import demo_like_folder


@pytest.fixture
def demo_like(tmp_path):
    """A demo folder (three runs, a depth study, spectra) from :mod:`run_files`."""
    return demo_like_folder(tmp_path)


@pytest.fixture
def demo_folder(demo_like):
    return demo_like
