"""What every job and query stands on: object storage, Ray clusters and their watchdog, store faults, job entries
and flags, how a run ends.
"""
