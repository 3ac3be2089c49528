"""Publish a counter and a timestamp into the Fast pipe "clock" as fast as possible.

    python examples/fast_sender.py          # runs for 10 seconds

Each send() replaces the pipe's current value and never waits for receivers;
run examples/fast_receiver.py alongside to sample it.
"""

import time

import pipebit

sender = pipebit.FastSender("clock", 0)
count = 0
stop = time.monotonic() + 10
while time.monotonic() < stop:
    count += 1
    sender.send([count, time.time()])
sender.close_connection()
print(f"published {count} values; the last one stays in the pipe")
