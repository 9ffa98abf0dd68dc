"""Embedding servers: the wire protocol, one endpoint's client, routing and limits."""
