"""A camera stream: one process sends video frames as numpy arrays, another shows what it gets.

    pip install "pipebit[numpy]"
    python examples/camera.py             # 120 frames of 480x640 RGB
    python examples/camera.py --frames 30

The "camera" draws a moving bar into each frame and sends it with the frame's
number and time stamp; the viewer, in its own process, checks every frame and
prints the rate.  A frame is 0.9 MB: the pipe is made with room for eight of
them (``capacity``), since a pipe's default 4 MiB holds only four.
"""

import argparse
import multiprocessing
import time

import numpy as np

import pipebit

PIPE = "camera_demo"
HEIGHT, WIDTH = 480, 640
CAPACITY = 8 * (HEIGHT * WIDTH * 3 + 4096)


def frame(number: int) -> np.ndarray:
    """A test picture: black, with a white bar that moves one column per frame."""
    picture = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    picture[:, number % WIDTH] = 255
    return picture


def view(frames: int, ready: "multiprocessing.synchronize.Event") -> None:
    with pipebit.SafeReceiver(PIPE, 0, start="new", capacity=CAPACITY) as receiver:
        ready.set()
        seen, started, age = 0, time.monotonic(), 0.0
        for number, sent_at, picture in receiver:  # each packet: [number, time.time(), frame]
            age = time.time() - sent_at
            assert number == seen, f"frame {number} came when {seen} was due"
            assert picture.shape == (HEIGHT, WIDTH, 3), picture.shape
            assert picture.dtype == np.uint8, picture.dtype
            assert np.array_equal(picture, frame(number)), f"frame {number} is not what was sent"
            seen += 1
            if seen == frames:
                break
        elapsed = time.monotonic() - started
    print(f"viewer: {seen} frames, all intact, {seen / elapsed:.0f} frames/s; the last {age * 1000:.1f} ms old")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    ready = multiprocessing.get_context("spawn").Event()
    viewer = multiprocessing.get_context("spawn").Process(target=view, args=(args.frames, ready))
    viewer.start()
    ready.wait()  # start="new": send once the viewer is listening
    with pipebit.SafeSender(PIPE, 0, capacity=CAPACITY) as camera:
        for number in range(args.frames):
            camera.send([number, time.time(), frame(number)])
    viewer.join()
    pipebit.remove(PIPE)
    print(f"camera: {args.frames} frames sent")


if __name__ == "__main__":
    main()
