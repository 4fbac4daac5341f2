"""The tile table and the tables beside it: schema, keyed writes, indexes, lookups by id, labels, detections, source
versions.
"""
