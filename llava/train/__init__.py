"""Training the mini LLaVA: pre-trained parts (tokenizer, CLIP, language model), stage 1, stage 2."""
