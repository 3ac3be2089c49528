"""Across machines: the same sender and receiver, with the pipe on a Redis server.

    pip install ".[redis]"
    python examples/across_machines.py redis://:<password>@<host>:6379/0

The sender and the receiver below run as two processes here; on two machines
they would be the same two scripts, each started with PIPEBIT_URL set to the
server.  Neither mentions Redis: the environment decides where "across_demo"
lives (a name such as "redis://host:6379/0/across_demo" would too).  The
receiver starts first and the sender second, but either order works: the pipe
retains what was sent.
"""

import os
import subprocess
import sys

import pipebit

PIPE = "across_demo"
COUNT = 1000


def sender() -> None:
    with pipebit.SafeSender(PIPE) as pipe:
        for i in range(COUNT):
            pipe.send([i, f"reading {i}", os.getpid()])
    print(f"sender: {COUNT} packets sent", flush=True)


def receiver() -> None:
    got = []
    with pipebit.SafeReceiver(PIPE) as pipe:
        print("receiver: attached", flush=True)
        while len(got) < COUNT:
            got += pipe.receive(timeout=10)
    assert [packet[0] for packet in got] == list(range(COUNT))
    print(f"receiver: {len(got)} packets, in order, from process {got[0][2]}", flush=True)


def main(url: str) -> None:
    env = {**os.environ, "PIPEBIT_URL": url}  # what each machine would have in its environment
    receiving = subprocess.Popen([sys.executable, __file__, "receiver"], env=env, stdout=subprocess.PIPE, text=True)
    assert receiving.stdout is not None
    print(receiving.stdout.readline(), end="")  # "receiver: attached"
    subprocess.run([sys.executable, __file__, "sender"], env=env, check=True)
    print(receiving.stdout.read(), end="")
    assert receiving.wait(60) == 0
    os.environ["PIPEBIT_URL"] = url
    pipebit.remove(PIPE)  # deletes the pipe's keys on the server


if __name__ == "__main__":
    if sys.argv[1:] == ["sender"]:
        sender()
    elif sys.argv[1:] == ["receiver"]:
        receiver()
    elif len(sys.argv) == 2 and sys.argv[1].startswith(("redis://", "rediss://")):
        main(sys.argv[1])
    else:
        sys.exit(f"usage: python {sys.argv[0]} redis://[:password@]host[:port][/db]")
