"""What every layer may use: the device and precision decisions, host threads and memory,
torchrun/DDP helpers, atomic file writes, markdown cells, typed YAML sections.

Imports nothing from the rest of the package; names are imported from their modules.
"""
