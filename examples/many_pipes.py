"""Many pipes in one process: wait on all of them at once, without spinning.

    python examples/many_pipes.py

There is no select() over pipes; each receiver's receive() waits on its own
pipe.  So give each receiver a thread that iterates over it and puts what it
gets, tagged with the pipe's name, into one ``queue.Queue``; the main thread
then waits on that one queue.  A receiver's iteration ends when it is closed,
which ends its thread.

(To only poll -- a GUI timer, a game loop -- call ``receive(timeout=0)`` on each
receiver in turn instead: it never blocks.)

Here three sensor processes each send into a pipe of their own, and a Fast pipe
carries a status value alongside; the main process reads all four.
"""

import multiprocessing
import queue
import threading
from typing import Union

import pipebit

SENSORS = ("temperature", "pressure", "humidity")
COUNT = 200


def sensor(name: str) -> None:
    with pipebit.SafeSender(f"many_{name}") as sender:
        for i in range(COUNT):
            sender.send([name, i, i * 0.5])


def pump(receiver: Union[pipebit.SafeReceiver, pipebit.FastReceiver], inbox: "queue.Queue[tuple[str, list]]") -> None:
    for packet in receiver:  # until the receiver is closed
        inbox.put((receiver.name, packet))


def main() -> None:
    inbox: queue.Queue[tuple[str, list]] = queue.Queue()
    receivers: list[Union[pipebit.SafeReceiver, pipebit.FastReceiver]] = [
        pipebit.SafeReceiver(f"many_{name}", start="new") for name in SENSORS
    ]
    receivers.append(pipebit.FastReceiver("many_status", start="new"))
    threads = [threading.Thread(target=pump, args=(r, inbox), name=f"pump-{r.name}") for r in receivers]
    for thread in threads:
        thread.start()

    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=sensor, args=(name,)) for name in SENSORS]
    for process in processes:
        process.start()
    with pipebit.FastSender("many_status") as status:
        status.send(["sensors started", len(processes)])

        got: dict[str, list[int]] = {f"many_{name}": [] for name in SENSORS}
        statuses = []
        while sum(map(len, got.values())) < COUNT * len(SENSORS) or not statuses:
            pipe, packet = inbox.get(timeout=30)  # one wait for all four pipes
            if pipe == "many_status":
                statuses.append(packet)
            else:
                got[pipe].append(packet[1])

    for process in processes:
        process.join()
    for receiver in receivers:
        receiver.close_connection()  # ends its thread's iteration
    for thread in threads:
        thread.join()
    for receiver in receivers:
        pipebit.remove(receiver.name)
    for pipe, seqs in got.items():
        assert seqs == list(range(COUNT)), pipe  # each pipe in its own order
        print(f"{pipe}: {len(seqs)} packets, in order")
    print(f"many_status: {statuses[-1]}")


if __name__ == "__main__":
    main()
