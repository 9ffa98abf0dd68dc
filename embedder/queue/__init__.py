"""The MongoDB work queue: what a queue is, leases, marks, connection and retry."""
