"""Latency harness and Fig. 1 / Table I reproduction (imports dealthdr, never the reverse)."""
