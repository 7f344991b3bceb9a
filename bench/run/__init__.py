"""`bench run`: the grid planned and validated, one run's life (train), its step, ranks and diagnostics, the
progress shown while it trains and the summary printed when the grid ends."""
