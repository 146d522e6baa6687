import pytest

from tests.tiny_models import build_tiny_sd, build_tiny_sdxl, write_subject_images


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random-weight SD pipeline folder (epsilon prediction)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny random-weight SDXL pipeline folder."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "model")


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory):
    return write_subject_images(tmp_path_factory.mktemp("subject") / "photos")
