"""tftune: ULMFiT-style transfer learning for text with Keras recurrent stacks on frozen vectors."""

__version__ = "0.1.0"
