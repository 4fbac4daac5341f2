"""The detection job: a label set's linear probe scores every tile of a table, in Ray Data tasks over Lance
fragments.
"""
