"""Fresh runs and resuming: what a receiver gets, by its start mode, when it (re)starts.

    python examples/resume.py

Each step below is its own process, as separate runs of a sender and a receiver
would be.  The pipe outlives them all, which is what lets a receiver resume:

1. a sender sends packets 0-4; a receiver (start="unread", the default) gets 0-4;
2. while no receiver runs, the sender sends 5-9; the receiver, run again, gets
   only 5-9: nothing lost, nothing twice;
3. a monitor with start="oldest" replays everything the pipe retains, 0-9;
4. a receiver with start="new" gets only what is sent after it attached (10);
5. pipebit.remove() deletes the pipe: the next run starts from nothing.
"""

import subprocess
import sys

import pipebit

PIPE = "resume_demo"


def send(first: int, last: int) -> None:
    with pipebit.SafeSender(PIPE) as sender:
        for i in range(first, last + 1):
            sender.send([i])


def receive(start: str) -> None:
    with pipebit.SafeReceiver(PIPE, start=start) as receiver:
        got = [packet[0] for packet in receiver.receive(timeout=2)]
    print(f"receiver (start={start!r}) got {got}")


def receive_new() -> None:
    with pipebit.SafeReceiver(PIPE, start="new") as receiver:
        run("send", "10", "10")  # another process sends, after this receiver attached
        got = [packet[0] for packet in receiver.receive(timeout=5)]
    print(f"receiver (start='new') got {got}")


def run(*args: str) -> None:
    """Run one step in a process of its own."""
    subprocess.run([sys.executable, __file__, *args], check=True)


def main() -> None:
    try:
        pipebit.remove(PIPE)
    except pipebit.PipeNotFoundError:
        pass
    run("send", "0", "4")
    run("receive", "unread")
    run("send", "5", "9")
    run("receive", "unread")
    run("receive", "oldest")
    run("receive-new")
    pipebit.remove(PIPE)
    run("receive", "oldest")  # a fresh pipe: nothing retained
    pipebit.remove(PIPE)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        main()
    elif sys.argv[1] == "send":
        send(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "receive":
        receive(sys.argv[2])
    else:
        receive_new()
