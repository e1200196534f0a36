"""gsx: train, load, evaluate and use JumpReLU sparse autoencoders on Gemma 3."""

__version__ = "0.1.0"
