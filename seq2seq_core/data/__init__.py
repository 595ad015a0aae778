"""From a corpus to training batches: readers (errors name file and line), cleaning and
filters, the built-in Bible corpus, ingest and split, the data report, tokenization, and
the length-bucketed batches.

Names are imported from their modules: importing the folder loads none of them.
"""
