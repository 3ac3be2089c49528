"""multiprocessing and fork: open endpoints in the process that uses them.

    python examples/multiprocessing_and_fork.py

* A pool's task (or a Process target) opens its own sender, whatever the start
  method.  In a task, open it with ``with``: leaving the block delivers what the
  task sent, and a worker that runs many tasks does not pile up endpoints (a pipe
  has 64 slots).  A Process target may simply return: the child delivers what its
  open senders hold as it ends.  Close and join a pool (``pool.close();
  pool.join()``) rather than leaving ``with Pool()``, which terminates workers
  with SIGTERM: a worker killed so loses what its senders still had queued.
* An endpoint does not survive a fork: the child's copy refuses to work, with a
  PipeClosedError that says why, while the parent's goes on untouched.  The
  child opens its own.
"""

import multiprocessing
import os

import pipebit

PIPE = "mp_demo"


def task(n: int) -> int:
    with pipebit.SafeSender(PIPE) as sender:  # opened in the worker, used in the worker
        for i in range(100):
            sender.send([n, i])
    return n


def forked_child(inherited: pipebit.SafeSender) -> None:
    try:
        inherited.send(["from the child"])
    except pipebit.PipeClosedError as error:
        print(f"child {os.getpid()}: the inherited sender refuses: {error}")
    own = pipebit.SafeSender(PIPE)  # its own endpoint works
    own.send(["child", os.getpid()])  # and is delivered as the child ends


def main() -> None:
    with pipebit.SafeReceiver(PIPE, start="new") as receiver:
        for method in ("spawn", "fork", "forkserver"):
            if method not in multiprocessing.get_all_start_methods():
                continue
            pool = multiprocessing.get_context(method).Pool(3)
            assert sorted(pool.map(task, range(6))) == list(range(6))
            pool.close()
            pool.join()
            got = []
            while len(got) < 600:
                got += receiver.receive(timeout=10)
            assert sorted(got) == sorted([n, i] for n in range(6) for i in range(100)), method
            print(f"{method}: 6 tasks in 3 workers delivered all 600 packets")

        parent = pipebit.SafeSender(PIPE)
        child = multiprocessing.get_context("fork").Process(target=forked_child, args=(parent,))
        child.start()
        child.join()
        assert child.exitcode == 0
        parent.send(["parent"])  # the parent's sender goes on untouched
        parent.close_connection()
        got = []
        while len(got) < 2:
            got += receiver.receive(timeout=10)
        assert got == [["child", child.pid], ["parent"]], got
        print("fork: the child's own sender and the parent's both delivered")
    pipebit.remove(PIPE)


if __name__ == "__main__":
    main()
