"""Text out of a trained model: greedy decoding and beam search with their shared length
limit, the ``Translator`` (text in, text out) and the serving request batcher.

Names are imported from their modules: importing the folder loads none of them.
"""
