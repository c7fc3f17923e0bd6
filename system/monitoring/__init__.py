"""Monitoring of reward collapse: metric names (names.py), the run logger to metrics.jsonl and wandb
(logger.py, records.py), the collapse monitor's detectors and actions (monitor.py), the dashboard defined
once (dashboard.py), the offline report (report.py, cli.py), the KL drift probe (probe.py) and a reader of
offline wandb run files (wandb_file.py).

Imports are per module (``from system.monitoring.logger import RunLogger``): the report and the logger
do not load torch; the monitor and the probe do.
"""
