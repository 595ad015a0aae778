"""Scores with sacrebleu signatures, per-length BLEU, reports and plots, and the paired
bootstrap test. No stage code: ``stages.evaluate`` drives them.

Names are imported from their modules: importing the folder loads none of them (sacrebleu
and matplotlib load with the module that needs them).
"""
