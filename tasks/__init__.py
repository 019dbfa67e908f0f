"""Pipeline work units: plain typed functions (config, records, worker, ledger) and the Prefect
tasks that wrap them (`tasks.steps`). Only `tasks.steps` imports Prefect."""
