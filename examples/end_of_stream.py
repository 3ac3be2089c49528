"""End of stream: how a producer tells its consumers that it is done.

    python examples/end_of_stream.py

A pipe has no "closed by the sender" state -- it outlives its senders on purpose,
so that late receivers still get what was sent.  So the producer says it in the
stream itself: its last packet is a sentinel, a packet no data packet can be
mistaken for (here ``["end-of-stream", count]``).  Every consumer stops when it
reads it, and the count lets it check that it got everything.  A Safe pipe keeps
the order, so the sentinel arrives after every packet sent before it.

Two consumers run in their own processes; one starts only after the producer has
finished, and still gets everything, sentinel included.
"""

import multiprocessing

import pipebit

PIPE = "end_of_stream_demo"
END = "end-of-stream"  # first element of the sentinel packet


def produce(count: int) -> None:
    with pipebit.SafeSender(PIPE) as sender:
        for i in range(count):
            sender.send(["item", i, i * i])
        sender.send([END, count])  # the last packet: nothing follows it


def consume(index: int) -> None:
    received = 0
    with pipebit.SafeReceiver(PIPE, start="oldest") as receiver:
        for packet in receiver:  # yields packets as they arrive, in order
            if packet[0] == END:
                assert packet[1] == received, f"expected {packet[1]} items, got {received}"
                break
            assert packet == ["item", received, received * received], packet
            received += 1
    print(f"consumer {index}: {received} items, then the end of the stream")


def main() -> None:
    try:
        pipebit.remove(PIPE)  # an earlier run's stream, sentinel and all, must not count
    except pipebit.PipeNotFoundError:
        pass
    ctx = multiprocessing.get_context("spawn")
    early = ctx.Process(target=consume, args=(1,))
    early.start()  # may attach before or after the producer starts: start="oldest" gets it all
    producer = ctx.Process(target=produce, args=(1000,))
    producer.start()
    producer.join()
    late = ctx.Process(target=consume, args=(2,))  # the producer has exited already
    late.start()
    for process in (early, late):
        process.join()
        assert process.exitcode == 0
    pipebit.remove(PIPE)


if __name__ == "__main__":
    main()
