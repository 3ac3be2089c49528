"""The report's prose: how every scenario is measured, and where PipeBit's time and memory go.

Plain text, kept apart from the code that fills in the tables: ``report.py``
puts it into ``docs/benchmarks.md`` (``METHOD`` has blanks for the settings).
"""

METHOD = """\
- Every process is a real child process (`multiprocessing`, `spawn` start method). Receivers open their end
  first (PipeBit receivers with `start="new"`), then the sender; then all warm up ({warmup_small:,} small or
  {warmup_mib} large packets, plus a handshake so that ZeroMQ subscribers are connected); a barrier starts the
  clock when every process is ready. Pipe names are unique per run; every PipeBit pipe is removed with
  `pipebit.remove(name, force=True)` and every ZeroMQ socket file deleted afterwards.
- Same packets and the same serialization burden for all: senders are given Python lists
  (`[i, i+1, i+2, i+3, i+4]`, or `[i, <1 MiB bytes>]`) and receivers hand back Python lists. PipeBit
  encodes with MessagePack (its only format); `multiprocessing` and faster-fifo pickle (their default);
  for ZeroMQ the harness pickles with the default protocol, as `send_pyobj` does.
- Receivers use each library's ordinary blocking receive: PipeBit's `receive(timeout=None)` and
  faster-fifo's `get_many()` hand out every packet waiting, `mp.Queue.get()`, `Connection.recv()` and
  ZeroMQ's `recv()` one at a time. Every receiver checks the count and order of what it gets (and the last
  packet in full); a loss or reordering where the model promises none is flagged in the checks column.
- PipeBit Safe: `SafeSender(name, 0, capacity=...)` with a 4 MiB ring (the default) for small packets and
  64 MiB for 1 MiB packets. faster-fifo gets the same buffer sizes (`max_size_bytes`). `mp.Queue` is
  unbounded (its default). ZeroMQ uses `ipc://` sockets with its default high-water mark (1000 messages)
  except "HWM raised", where `SNDHWM` and `RCVHWM` are 0 (no limit). Fan-out with queues means one queue
  per receiver, so the sender puts (and pickles) every packet once per receiver.
- Fan-out: ZeroMQ PUB/SUB drops packets when a subscriber's queue reaches the high-water mark; its
  receivers stop after {idle:g} s of silence and the loss is reported, not hidden.
- Round trip: two one-way channels (for PipeBit two Safe pipes; the echo side calls `receive(timeout=None)`),
  {warmup_round_trips:,} warm-up round trips, timed with `time.perf_counter_ns()`. "PipeBit Safe" uses the
  default `spin="auto"` (poll up to 50 µs before sleeping, only while the packets waited for came that
  quickly); "PipeBit Safe, spin=0" never polls, so every wait is a sleep and a wake-up; "PipeBit Safe, spin"
  is the opt-in low-latency mode: both receivers are made with `spin={spin:g}` (always poll up to
  {spin_us:,.0f} µs, then sleep).
- Latest value: PipeBit Fast against ZeroMQ PUB/SUB with `CONFLATE` on the subscriber. The packet carries
  `time.monotonic_ns()` of the send; `CLOCK_MONOTONIC` is one clock for the whole machine on Linux, so the
  reader can subtract it. Readers poll without pause (`receive(timeout=0)`, `recv(NOBLOCK)`).
- Memory: the receiver sleeps 1 ms per packet. The sender is stopped with SIGTERM at the end (with
  backpressure it is blocked inside `send()`, which is the point). A sender past 3 GiB is stopped early.
- Medians of {runs} run(s); in each run the peers of a scenario are measured one after the other, so a slow
  phase of the machine tends to hit them all. Ranges in parentheses are min-max over runs.
"""

COSTS = """\
- A Safe packet streamed in a burst crosses threads: `send()` queues it for the sender's delivery thread,
  which writes many packets as one record, and `receive()` decodes whole records at once. Batching makes
  this cheap per packet. A lone packet skips the queue: `send()` writes it into the ring itself when the
  delivery thread is idle and the previous lone send was more than 5 µs ago, and a `receive()` call that
  is waiting reads and sleeps on the ring itself. With `spin=0` a request/reply exchange thus pays one
  process wake-up each way, as `mp.Pipe` does.
- That wake-up is the floor of a round trip that sleeps on this virtual machine. `benchmarks/wake_floor.py`
  ping-pongs two processes over bare POSIX semaphores: as soon as each side does even 2 µs of work
  between posts, so that the other really goes to sleep, the two wake-ups of a round trip cost about
  55-65 µs together, whatever the library (with no work at all, ~6 µs). PipeBit's own work per round
  trip is 12-20 µs (the spin row, where nobody sleeps), so the `spin=0` row lands level with `mp.Pipe`.
  The default `spin="auto"` avoids the wake-ups where they would come thick and fast: a waiting
  `receive()` polls for up to 50 µs, but only while the record it last waited for was committed within
  50 µs of the wait starting (the ring header holds the commit time). An exchange settles into polling
  after a round trip or two; an idle receiver, or a stream with longer gaps, sleeps at once. The most it
  costs is 50 µs of CPU per packet waited for, and only when packets come at least that often, when a
  sleeping receiver would spend much of that on wake-ups anyway.
- Per packet, PipeBit's cost is Python bytecode: encoding, a lock, a deque append on the sending side;
  decoding and list building on the receiving side. The sender's delivery thread shares the GIL with the
  application, so the sender's own `send()` loop is the 1→1 bottleneck. The table below splits one
  `send()` into the steps no pure-Python sender can avoid (the caller's own loop, a method call, the
  encoding, a lock, an append) and what PipeBit adds: the type and length checks, the queue's bound in
  packets and in bytes (a credit counted down per packet), and the hand-off to the delivery thread,
  20-30 % of `send()` in all, each piece a few Python operations that the Safe pipeline's promises need.
  That share is what keeps the 1→1 stream under eight times `mp.Queue` here. The delivery thread's own share
  (joining a batch, copying it into the ring) is small.
- On the receiving side a record's thousands of lists are built by one decoding call, and each counted
  towards CPython's next garbage collection: a batch of 4,000 small packets set off about a dozen
  collections, each scanning the packets being built. Receivers pause the collector while a payload of
  2 KiB or more decodes (the table's last two rows), which frees CPU on a 2-core machine where the
  receivers and the sender share the cores (the 1→4 fan-out gained most).
- Fast `send()` takes no lock shared with other processes and never waits for readers. Readers still
  cost it a little: each poll pulls the register's cache line to the reader's core and the sender's next
  store takes it back (see the per-CPU-second column), and on a 2-core machine busy-polling readers take
  CPU time away from it. Its own cost is well above Safe's: a seqlock publication is five 8-byte stores,
  a payload copy and a clock read, plus the lock between the sender's own threads, each a separate
  Python-level operation. The table below puts the least such publication (no lock, no clock, no checks)
  beside `FastSender.send()`, which takes about twice as long. Even the least one, ~0.5 µs in the
  caller's loop, reaches about 1M updates/s only on a core of its own; with 3 busy-polling readers on 2
  cores the sender gets half a core, so 1M updates/s with readers attached is out of reach for a
  pure-Python sender here.
- 1 MiB packets: each received packet becomes a fresh 1 MiB `bytes` object. An application frees what
  one `receive()` returned all at once; when that was many megabytes, glibc handed the memory back to the
  system and the next packets faulted in fresh pages (70-80 faults and ~350 µs of receiver CPU per
  packet). A `receive()` call therefore stops reading the pipe after about 1 MiB of packets, which keeps
  the freed blocks in glibc's hands for the next ones (2-3 faults, ~100 µs). `benchmarks/big_packets.py`
  shows the receiver's faults and CPU per packet with glibc's defaults and with its trim and mmap
  thresholds raised; the peers pay the same allocation, which is why their bandwidth swings from run
  to run.
- Memory under a slow receiver is bounded by configuration: the sender queues at most `queue_size`
  packets (8192) or 1 MiB, the ring is a fixed size (4 MiB of shared memory, allocated when the pipe is
  made and mapped whole at attach), and the receiver caches up to `max_cached` decoded packets (65536)
  or `max_cached_bytes` (64 MiB of records) ahead of `receive()`.
"""

REDIS_NOTE = (
    "One sender, 1 or 4 receiver processes, each checking every packet; the rate is per receiver, from the "
    "first send() to the slowest receiver's last packet. Same classes, the pipe named by a `redis://` URL. "
    "`benchmarks/redis_bench.py` runs this section alone."
)

TARGET_NOTE = (
    "Targets come from the benchmark issue. 'A few MB' is read as at most 5 MB. The Fast targets are judged "
    "with 3 readers attached and polling (the harder case on this 2-core machine)."
)
