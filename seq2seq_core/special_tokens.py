"""The special token ids, fixed in every vocabulary kind so that the tokenizers, the
model's embedding rows, batching and the decoders' stopping rule agree without looking
anything up."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # their pieces, in id order
