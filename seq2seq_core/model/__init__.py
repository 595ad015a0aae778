"""The torch modules (encoder, attention, decoder, ``Seq2Seq`` and ``build_model``, its only
builder) and checkpoint I/O.

Names are imported from their modules: importing the folder loads none of them.
"""
