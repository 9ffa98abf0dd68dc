"""``embedder serve``: a server that speaks TEI's API, for machines without GPUs or Docker."""
