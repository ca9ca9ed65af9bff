"""Model side of LLaVA: checkpoint loading and the tiny offline checkpoint builder."""
