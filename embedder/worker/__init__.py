"""One worker process: documents, batching, re-use, the pipeline and its runner."""
