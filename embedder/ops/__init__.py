"""Commands that inspect or steer a queue and its output: status, verify, requeue, autotune."""
