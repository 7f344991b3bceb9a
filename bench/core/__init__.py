"""The ground floor, imported by everything above and importing nothing of bench's: errors, files written whole,
provenance, the records and their schemas, the run configuration, precisions and modes, signals, the allocator."""
