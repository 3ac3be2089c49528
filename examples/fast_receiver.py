"""Sample the Fast pipe "clock" ten times a second, like a GUI refreshing a label.

    python examples/fast_receiver.py

Every receive() returns only the newest value (or [] if nothing new was
published since the last call), so a slow reader never falls behind and never
holds the sender back.  Ctrl-C stops it and removes the pipe.
"""

import time

import pipebit

receiver = pipebit.FastReceiver("clock", 0)
last = 0
try:
    while True:
        for count, sent_at in receiver.receive(timeout=0.1):
            age_us = (time.time() - sent_at) * 1e6
            print(f"value {count:>10}  ({count - last - 1:>8} newer values skipped, {age_us:7.0f} us old)")
            last = count
        time.sleep(0.1)
except KeyboardInterrupt:
    pass
finally:
    receiver.close_connection()
    try:
        pipebit.remove("clock")
    except pipebit.PipeBusyError:
        pass  # the sender is still running
