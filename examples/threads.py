"""Sharing endpoints between threads: what is safe, shown and checked.

    python examples/threads.py

* A SafeSender may be shared: any number of threads may call send(), flush()
  and stats() at once, and each thread's packets keep their order.
* A SafeReceiver may be shared: any number of threads may call receive() (or
  iterate) at once, and each packet goes to exactly one of them -- the one whose
  call takes it.  A call takes every packet waiting, so one thread may well take
  them all (as here): it is safe, not a way to spread work.  To have every thread
  see every packet, give each its own receiver.
* close_connection() may be called from another thread while threads are in
  receive() (or send()): a waiting receive() raises PipeClosedError, and a
  ``for packet in receiver`` loop simply ends.
* Connect and disconnect (open_connection(), close_connection()) from one
  thread at a time.

Fast endpoints follow the same rules; a FastSender's concurrent send()s take
turns, and the last to publish wins.
"""

import threading
from collections import defaultdict

import pipebit

PIPE = "threads_demo"
SENDERS, PER_SENDER, READERS = 4, 2500, 3


def main() -> None:
    receiver = pipebit.SafeReceiver(PIPE, start="new")
    taken: dict[str, list[list]] = defaultdict(list)

    def read(name: str) -> None:
        for packet in receiver:  # ends when the main thread closes the receiver
            taken[name].append(packet)

    readers = [threading.Thread(target=read, args=(f"reader-{k}",)) for k in range(READERS)]
    for thread in readers:
        thread.start()

    with pipebit.SafeSender(PIPE) as sender:

        def send(who: int) -> None:
            for i in range(PER_SENDER):
                sender.send([who, i])  # one sender, shared

        senders = [threading.Thread(target=send, args=(k,)) for k in range(SENDERS)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        sender.flush(timeout=30)

    # Wait until the readers have taken every packet, then close from this thread.
    while sum(map(len, taken.values())) < SENDERS * PER_SENDER:
        threading.Event().wait(0.01)
    receiver.close_connection()
    for thread in readers:
        thread.join(timeout=30)
        assert not thread.is_alive(), "closing ends every reader's iteration"
    pipebit.remove(PIPE)

    everything = [packet for packets in taken.values() for packet in packets]
    assert sorted(everything) == sorted([k, i] for k in range(SENDERS) for i in range(PER_SENDER))  # each once
    for name, packets in sorted(taken.items()):
        for k in range(SENDERS):  # within a reader, each sending thread's packets are in order
            seqs = [i for who, i in packets if who == k]
            assert seqs == sorted(seqs), name
        print(f"{name}: took {len(packets)} packets")
    print(f"{len(everything)} packets from {SENDERS} threads, each taken by exactly one of {READERS} readers")


if __name__ == "__main__":
    main()
