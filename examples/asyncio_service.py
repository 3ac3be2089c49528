"""An asyncio service: a stream received with ``async for``, values published with ``asend()``,
and other tasks running all the while -- no thread, no blocked event loop.

    python examples/asyncio_service.py

A sensor process sends 1000 readings into a Safe pipe.  The service averages them
and publishes the running average on a Fast pipe every 100 readings; a display
task awaits those values, and a heartbeat task ticks meanwhile.
"""

import asyncio
import multiprocessing

import pipebit

READINGS, AVERAGES = "asyncio_readings", "asyncio_averages"
COUNT = 1000


def sensor() -> None:
    with pipebit.SafeSender(READINGS, 0) as sender:
        for i in range(COUNT):
            sender.send([i, i % 7])


async def heartbeat() -> None:
    while True:
        await asyncio.sleep(0.01)


async def display(averages: pipebit.FastReceiver) -> None:
    async for index, average in averages:  # ends when the receiver is closed
        print(f"after {index + 1} readings: average {average:.2f}")


async def service(readings: pipebit.SafeReceiver) -> None:
    async with pipebit.FastReceiver(AVERAGES, 0, start="new") as averages, pipebit.FastSender(AVERAGES, 0) as out:
        tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(display(averages))]
        total = received = 0
        async for index, value in readings:
            assert index == received, f"reading {index} came where {received} was due"
            received += 1
            total += value
            if index % 100 == 99:
                await out.asend([index, total / (index + 1)])
                await asyncio.sleep(0.05)  # let the display show it (a Fast pipe keeps the newest only)
            if index == COUNT - 1:
                break
        tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # closing the receiver ended display()
    print(f"service: {COUNT} readings, in order, average {total / COUNT:.2f}")


def main() -> None:
    readings = pipebit.SafeReceiver(READINGS, 0)  # attached first: it gets every reading
    process = multiprocessing.get_context("spawn").Process(target=sensor)
    process.start()
    try:
        asyncio.run(service(readings))
    finally:
        readings.close_connection()
        process.join()
        for name in (READINGS, AVERAGES):
            pipebit.remove(name)


if __name__ == "__main__":
    main()
