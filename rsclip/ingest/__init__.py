"""The embedding job: listing -> planning -> reading -> embedder -> writer, wired by the pipeline and checked first
by the preflight.
"""
