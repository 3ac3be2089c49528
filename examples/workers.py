"""A producer hands out jobs to a pool of workers; no job is lost, even if a worker is killed.

    python examples/workers.py          # 3 workers share 2,000 jobs
    python examples/workers.py --kill   # ... and one of them is SIGKILLed half-way

The workers are members of the receiver group "resize" of the pipe "jobs_demo": each job
goes to one of them.  A worker acknowledges a batch of jobs by asking for the next one,
so the jobs a killed worker held go to the others.  Results come back over a second pipe,
flushed before the jobs are acknowledged; a job done twice (only one the killed worker
held) is counted once.
"""

import multiprocessing
import os
import signal
import sys
import time

import pipebit

JOBS, RESULTS, GROUP = "jobs_demo", "results_demo", "resize"
COUNT = 2_000


def work(stop: "multiprocessing.synchronize.Event") -> None:
    results = pipebit.SafeSender(RESULTS)
    with pipebit.SafeReceiver(JOBS, group=GROUP, start="oldest") as jobs:
        while not stop.is_set():
            for job_id, size in jobs.receive(timeout=0.1):  # acknowledges the previous batch
                time.sleep(0.001)  # the work: 1 ms per job
                results.send([job_id, size * 2, os.getpid()])
            results.flush()  # the results are in their pipe before the jobs are acknowledged
    results.close_connection()


def main() -> None:
    kill = "--kill" in sys.argv[1:]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    done = pipebit.SafeReceiver(RESULTS, start="new")
    with pipebit.SafeSender(JOBS) as producer:
        for job_id in range(COUNT):
            producer.send([job_id, job_id % 640])
        workers = [ctx.Process(target=work, args=(stop,)) for _ in range(3)]
        for worker in workers:
            worker.start()
        finished: dict[int, int] = {}
        by_worker: dict[int, int] = {}
        while len(finished) < COUNT:
            for job_id, result, pid in done.receive(timeout=1):
                assert result == (job_id % 640) * 2
                finished[job_id] = result
                by_worker[pid] = by_worker.get(pid, 0) + 1
            if kill and len(finished) >= COUNT // 2:
                kill = False
                os.kill(workers[0].pid or 0, signal.SIGKILL)  # mid-batch: its jobs go to the others
                workers.append(ctx.Process(target=work, args=(stop,)))
                workers[-1].start()
    stop.set()
    for worker in workers:
        worker.join()
    group = next(g for g in pipebit.pipe_stats(JOBS).groups if g.name == GROUP)
    print(f"all {COUNT} jobs done; by worker: {sorted(by_worker.values(), reverse=True)}")
    print(f"redelivered after a worker died: {group.redelivered}; done twice: {sum(by_worker.values()) - COUNT}")
    done.close_connection()
    pipebit.remove_group(JOBS, GROUP)
    pipebit.remove(JOBS)
    pipebit.remove(RESULTS)


if __name__ == "__main__":
    main()
