"""One sender, three receivers: every receiver gets every packet, in order.

    python examples/fan_out.py

Each receiver runs in its own process and checks what it got.
"""

import multiprocessing

import pipebit

PIPE = "fan_out_demo"
COUNT = 10_000


def receive_all(index: int, ready: "multiprocessing.synchronize.Event") -> None:
    with pipebit.SafeReceiver(PIPE, 0, start="new") as receiver:
        ready.set()
        expected = 0
        while expected < COUNT:
            for packet in receiver.receive():
                assert packet == [expected, f"packet {expected}"], packet
                expected += 1
    print(f"receiver {index}: all {COUNT} packets, in order")


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    events = [ctx.Event() for _ in range(3)]
    workers = [ctx.Process(target=receive_all, args=(i, e)) for i, e in enumerate(events)]
    for worker in workers:
        worker.start()
    for event in events:
        event.wait()  # start="new": send only once everyone is listening
    with pipebit.SafeSender(PIPE, 0) as sender:
        for i in range(COUNT):
            sender.send([i, f"packet {i}"])
    for worker in workers:
        worker.join()
    pipebit.remove(PIPE)


if __name__ == "__main__":
    main()
