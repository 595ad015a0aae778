"""runtime.threads: how many torch threads a run takes."""

from seq2seq_core.runtime.threads import pick_threads, usable_cores


def test_pick_threads_uses_the_idle_cores() -> None:
    usable = usable_cores()
    assert pick_threads(3) == 3  # asked for: no measurement
    assert pick_threads(0, idle=0.0) == 1  # never fewer than one
    assert pick_threads(0, idle=0.4) == 1
    assert pick_threads(0, idle=1.6) == min(2, usable)  # rounded to the nearest core
    assert pick_threads(0, idle=1000.0) == usable  # never more than the process may use
