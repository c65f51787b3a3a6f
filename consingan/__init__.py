"""consingan: ConSinGAN single-image GANs as a library and a command line.

    import consingan
    model = consingan.train("Images/Generation/rocket.png", niter=500, out_dir="runs/rocket")
    images = model.sample(8, scale_w=2.0, seed=0)
"""
from .tasks.animate import Walk, animate, write_animations
from .api import as_image, load, prepare, train, write_samples
from .plan import Plan
from .config import Config, make_config
from .errors import UserError
from .storage.image_files import read_image, save_image
from .model import ConSinGAN

__version__ = "0.1.0"
__all__ = ["Config", "ConSinGAN", "UserError", "as_image", "load", "make_config", "Plan", "prepare", "read_image",
           "save_image", "train", "write_samples", "Walk", "animate", "write_animations", "__version__"]
