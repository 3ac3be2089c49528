"""Request/reply over two kinds of pipe, matched by correlation ids.

    python examples/request_reply.py

A Safe pipe carries packets one way and to every receiver, so a conversation
takes two: clients send requests into the server's pipe ("rr_requests"), and
each request names the pipe its reply should go to.  Each client has its own
reply pipe, so it reads only its own replies.  A request is

    [request_id, reply_to, operation, argument]

and its reply ``[request_id, result]``: the id is the correlation id that
matches a reply to its request, which a client needs as soon as it has more than
one request in flight (here, batches of 10).  A request the server cannot handle
gets ``[request_id, None, "the error"]``, so no client waits forever.

Latency: a waiting receive() polls briefly before it sleeps while replies have
been coming quickly (spin="auto"), so a round trip on one machine takes tens of
microseconds, not the ~100 us of two process wake-ups.
"""

import multiprocessing
import time

import pipebit

REQUESTS = "rr_requests"
STOP = "stop"


def serve() -> None:
    """Answer requests until told to stop; one sender per reply pipe, kept open."""
    replies: dict[str, pipebit.SafeSender] = {}
    with pipebit.SafeReceiver(REQUESTS) as requests:
        for request_id, reply_to, operation, argument in requests:
            if operation == STOP:
                break
            sender = replies.get(reply_to)
            if sender is None:
                sender = replies[reply_to] = pipebit.SafeSender(reply_to, create=False)
            if operation == "square":
                sender.send([request_id, argument * argument])
            else:
                sender.send([request_id, None, f"unknown operation {operation!r}"])
    for sender in replies.values():
        sender.close_connection()


def client(name: str, count: int) -> None:
    reply_to = f"rr_replies-{name}"
    # Attach to the reply pipe before asking: a reply cannot arrive before there is somewhere to go.
    with pipebit.SafeReceiver(reply_to, start="new") as replies, pipebit.SafeSender(REQUESTS) as requests:
        results: dict[int, int] = {}
        started = time.perf_counter()
        for batch in range(0, count, 10):
            waiting = set(range(batch, min(batch + 10, count)))
            for request_id in waiting:
                requests.send([request_id, reply_to, "square", request_id])
            while waiting:
                for request_id, result, *error in replies.receive(timeout=10):
                    assert not error, error
                    waiting.discard(request_id)  # replies may come in any order: the id says whose
                    results[request_id] = result
        elapsed = time.perf_counter() - started
        requests.send([-1, reply_to, "cube", 3])
        assert replies.receive(timeout=10) == [[-1, None, "unknown operation 'cube'"]]
    assert results == {i: i * i for i in range(count)}
    print(f"client {name}: {count} replies, all matched ({elapsed / count * 1e6:.0f} us per request)")


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    server = ctx.Process(target=serve, daemon=True)  # daemon: should a client fail, exit does not wait for it
    server.start()
    clients = [ctx.Process(target=client, args=(name, 500)) for name in ("a", "b")]
    for process in clients:
        process.start()
    for process in clients:
        process.join()
        assert process.exitcode == 0
    with pipebit.SafeSender(REQUESTS) as requests:
        requests.send([0, "", STOP, None])
    server.join()
    assert server.exitcode == 0
    for pipe in (REQUESTS, "rr_replies-a", "rr_replies-b"):  # all their users have closed them
        pipebit.remove(pipe)


if __name__ == "__main__":
    main()
