"""Searches of a tile table: requests, filters, searchers (Lance and in-memory), query modes, examples, review,
exports, locate, zero-shot, timelines.
"""
