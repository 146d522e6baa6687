"""DreamBooth (Ruiz et al., CVPR 2023): personalize text-to-image diffusion models from a few photos."""

from dreambooth.config import TrainConfig

__all__ = ["TrainConfig", "train"]
__version__ = "0.1.0"


def train(config: TrainConfig):
    """Run DreamBooth fine-tuning; returns the output folder (see `dreambooth.trainer`)."""
    from dreambooth.trainer import train as _train

    return _train(config)
