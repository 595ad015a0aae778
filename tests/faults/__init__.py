"""Fault tests: each kills, stops or fills one real part (PostgreSQL, the S3 server, the MLflow
server, the Prefect server and worker, the disk) and checks what the next run finds.

They run apart from `make test` (`make test-faults`, which `.ci/run` calls too): each holds
real servers for minutes, and the 3-minute tracking-server outage alone would take `make test`
past its 12-minute budget. `SEQ2SEQ_FAULT_OUTAGE_S` shortens the outages for a quick local pass.
"""
