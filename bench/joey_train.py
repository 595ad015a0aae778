"""Runs Joey NMT 2.3 training inside its venv for a fixed wall time (bench only).

usage: joey-venv/bin/python bench/joey_train.py CONFIG.yaml SECONDS THREADS [--test OUT]
(--test OUT: greedy-translate the config's test set with best.ckpt into OUT.test; SECONDS 0
means no time limit.)
Patches torch's removed `ReduceLROnPlateau(verbose=...)` argument at run time (Joey 2.3
passes it; torch 2.13 no longer accepts it) instead of editing site-packages."""

from __future__ import annotations

import os
import sys
import threading

import torch
import torch.optim.lr_scheduler as sched

_plateau_init = sched.ReduceLROnPlateau.__init__


def _init_without_verbose(self, *args, **kwargs):
    kwargs.pop("verbose", None)
    _plateau_init(self, *args, **kwargs)


sched.ReduceLROnPlateau.__init__ = _init_without_verbose


def main() -> None:
    config, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    if seconds > 0:
        timer = threading.Timer(seconds, lambda: os._exit(0))  # a fixed wall-time budget
        timer.daemon = True
        timer.start()
    from joeynmt.__main__ import main as joey_main

    if sys.argv[4:5] == ["--test"]:
        sys.argv = ["joeynmt", "test", config, "--output-path", sys.argv[5]]
    else:
        sys.argv = ["joeynmt", "train", config, "--skip-test"]
    joey_main()


if __name__ == "__main__":
    main()
