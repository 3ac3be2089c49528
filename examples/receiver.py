"""Print packets from the pipe "data_pipe" as they arrive.

    python examples/receiver.py            # run until Ctrl-C
    python examples/receiver.py --count 50 # stop after 50 packets

On the way out it removes the pipe, unless another process is still attached
(it then says so): pipes outlive their processes (that is what lets the sender
run first), so someone has to tidy up.  `pipebit.remove()` is how.
"""

import argparse
import sys

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
    except pipebit.PipeNotFoundError:
        pass  # another process removed it meanwhile: nothing is left behind
    except pipebit.PipeBusyError as exc:
        # Another process is attached: a sender still sending, another receiver -- or, over
        # Redis, one that died less than 5 s ago (a process counts as live until its 5 s
        # deadline passes).  Say so rather than wait and retry: waiting helps only in that
        # last case, and would hold up every exit while a sender runs on.  A pipe left
        # behind costs only its memory, and `pipebit clean` removes it once unused.
        print(
            f"left the pipe in place ({exc}); remove it later with `pipebit rm data_pipe`, or `pipebit clean`",
            file=sys.stderr,
        )
print(f"received {received} packets")
