"""The results folder and what its numbers mean: run folders written so that nothing is lost (store: the layout,
JSON files, status, locks; parquet: epochs and layers tables; checkpoints), read back (reading), where each chunk of
a run trained (chunks), what fits means (fitting) and the numbers in words (prose)."""
