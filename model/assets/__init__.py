"""Checked-in assets (the tiny tokenizer) and the script that rebuilds them."""
