"""Imported once by the forkserver, so every forked worker starts warm.

Besides torch and the host it loads what ``FlopCounterMode`` imports lazily on
first use (~3 s on a laptop-class CPU, otherwise spent out of every run's
wall-clock cap), then freezes the garbage collector's view of all of it:
``run_one`` collects garbage after each run, and scanning the ~10^6 objects
of those imports cost half a second per run.
"""

import gc

from gmbench.execution.worker import warm_up

warm_up()
gc.freeze()
