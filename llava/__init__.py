"""LLaVA: the library (conversation templates, image handling, models, training, evaluation)."""
