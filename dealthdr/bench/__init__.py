"""Latency harness, device-result ingestion and Fig. 1 / Table I reproduction.

A tool package: it imports the network and the exporters, the network never imports it. Run
it as `dealthdr bench COMMAND` or `python -m device_bench COMMAND` from a checkout."""
