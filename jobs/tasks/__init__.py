"""Synthetic tasks: deterministic generators of train / held-out prompt files in the dataset format
(`jobs.data`: uid, task, prompt, answer, plus extra fields such as a reference `response` for SFT)."""
