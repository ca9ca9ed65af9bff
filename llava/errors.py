"""Exceptions a caller can act on. Each maps to one wire error code in serve/protocol.py."""


class LlavaError(Exception):
    """Base class: the message is meant for the person who sent the request."""


class ModelLoadError(LlavaError):
    """The folder is missing, is not a Hugging Face LLaVA checkpoint, or failed to load."""


class PromptError(LlavaError, ValueError):
    """The request cannot be run as given (e.g. images and <image> tokens disagree)."""


class ContextOverflowError(PromptError):
    """The prompt, image tokens included, does not leave room for one new token."""
