"""Send 50 packets of five integers into the pipe "data_pipe", then exit.

Run it before or after examples/receiver.py: the pipe keeps recent packets, so
a receiver that starts later still gets all 50.  No close or sleep is needed;
PipeBit delivers what is queued when the script ends.
"""

import pipebit

sender = pipebit.SafeSender("data_pipe", 1)  # 1: log what PipeBit does to stderr

for i in range(50):
    sender.send([i, i + 1, i + 2, i + 3, i + 4])

print("sent 50 packets")
