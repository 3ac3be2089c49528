"""Print packets from the pipe "data_pipe" as they arrive.

    python examples/receiver.py            # run until Ctrl-C
    python examples/receiver.py --count 50 # stop after 50 packets

On the way out it removes the pipe, unless a sender is still attached:
pipes outlive their processes (that is what lets the sender run first), so
someone has to tidy up.  `pipebit.remove()` is how.
"""

import argparse

import pipebit

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--count", type=int, default=0, help="stop after this many packets (0: never)")
args = parser.parse_args()

receiver = pipebit.SafeReceiver("data_pipe", 0)
received = 0
try:
    while args.count == 0 or received < args.count:
        packets = receiver.receive()  # waits up to 0.1 s, so this loop sleeps when idle
        for packet in packets:
            print(packet)
        received += len(packets)
except KeyboardInterrupt:
    pass
finally:
    receiver.close_connection()
    try:
        pipebit.remove("data_pipe")
    except pipebit.PipeBusyError:
        pass  # a sender is still using it: leave it be
print(f"received {received} packets")
