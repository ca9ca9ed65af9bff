"""Evaluation of the mini LLaVA checkpoints: chat questions and ScienceQA tables."""
