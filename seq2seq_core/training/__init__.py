"""The training loop in phases (``loop``), what they share (``session``), the one update
(``step``), the end of an epoch, resume, budget, optimizers and schedules, checkpoint
averaging, validation and warm start.

Names are imported from their modules: importing the folder loads none of them.
"""
