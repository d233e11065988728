"""The Python side of multiprocessing-benchmarks.

Runs one scenario with CPython's multiprocessing, several times, and prints
the seconds each repetition took as JSON: {"seconds": [...]}. The Swift
executable runs the same scenario with swift-multiprocessing in the same run
and prints the ratio.
"""
import argparse
import json
import multiprocessing as mp
import multiprocessing.managers
import os
import subprocess
import sys
import time


def noop():
    pass


def process_start_join(method):
    def run(count):
        ctx = mp.get_context(method)
        for _ in range(count):
            p = ctx.Process(target=noop)
            p.start()
            p.join()
    return run


def bare_fork(count):
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def echo(conn, other):
    other.close()  # a forked child inherits both ends
    while True:
        try:
            conn.send(conn.recv())
        except EOFError:
            return


def pipe_pingpong(count):
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=echo, args=(there, here))
    child.start()
    there.close()
    for i in range(count):
        here.send(i)
        here.recv()
    here.close()
    child.join()


MIB = b"x" * (1 << 20)


def drain_bytes(conn, other):
    other.close()  # a forked child inherits both ends
    while True:
        try:
            conn.recv_bytes()
        except EOFError:
            return


def pipe_bytes(count):
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=drain_bytes, args=(there, here))
    child.start()
    there.close()
    for _ in range(count):
        here.send_bytes(MIB)
    here.close()
    child.join()


def put_ints(queue, count):
    for i in range(count):
        queue.put(i)


def queue_ints(count):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=put_ints, args=(queue, count))
    child.start()
    for _ in range(count):
        queue.get()
    child.join()


def put_blobs(queue, count):
    for _ in range(count):
        queue.put(MIB)


def queue_bytes(count):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=put_blobs, args=(queue, count))
    child.start()
    for _ in range(count):
        queue.get()
    child.join()


def increment(value, count, go):
    go.wait()  # both children start together, so the lock is contended
    for _ in range(count):
        with value.get_lock():
            value.value += 1


def locked_value(count):
    ctx = mp.get_context("fork")
    value = ctx.Value("q", 0)
    go = ctx.Event()
    children = [ctx.Process(target=increment, args=(value, count // 2, go)) for _ in range(2)]
    for child in children:
        child.start()
    go.set()
    for child in children:
        child.join()
    assert value.value == count // 2 * 2


def write_raw(array, count):
    for i in range(count):
        array[i] = i


def raw_array(count):
    ctx = mp.get_context("fork")
    array = ctx.RawArray("q", count)
    writer = ctx.Process(target=write_raw, args=(array, count))
    writer.start()
    writer.join()
    total = 0
    for i in range(count):
        total += array[i]
    assert total == count * (count - 1) // 2


def square(x):
    return x * x


def pool_map(count):
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(square, range(count))[-1] == (count - 1) ** 2


def pool_imap_lazy(count):
    # range() is lazy, as the Swift side's input is; Python's imap reads it
    # all (its task handler thread queues every chunk) whatever the consumer does.
    total = 0
    with mp.get_context("fork").Pool(2) as pool:
        for y in pool.imap(square, range(count), chunksize=1000):
            total += y
    assert total == sum(x * x for x in range(count))


def status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def pool_apply(count):
    with mp.get_context("fork").Pool(2) as pool:
        for i in range(count):
            assert pool.apply_async(square, (i,)).get() == i * i


def set_items(shared, count):
    for i in range(count):
        shared[i] = i


def manager_dict(count):
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        shared = manager.dict()
        child = ctx.Process(target=set_items, args=(shared, count))
        child.start()
        child.join()
        assert len(shared) == count


def append_items(shared, count):
    for i in range(count):
        shared.append(i)


def manager_list(count):
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        shared = manager.list()
        child = ctx.Process(target=append_items, args=(shared, count))
        child.start()
        child.join()
        assert len(shared) == count


def add_items(shared, count):
    for i in range(count):
        shared.add(i)


class SetManager(mp.managers.SyncManager):
    pass


# Python 3.14's manager has set(); before it, the same proxy by registration.
if not hasattr(mp.managers.SyncManager, "set"):
    SetManager.register("set", set, exposed=("add", "__contains__", "__len__"))


def manager_set(count):
    ctx = mp.get_context("fork")
    with SetManager(ctx=ctx) as manager:
        shared = manager.set()
        child = ctx.Process(target=add_items, args=(shared, count))
        child.start()
        child.join()
        assert len(shared) == count


def first_result_in(method):
    """Seconds from making a pool of two (of this start method) to its first
    apply's result, in this process: run in a fresh one (see first_result)."""
    start = time.perf_counter()
    with mp.get_context(method).Pool(2) as pool:
        assert pool.apply(square, (3,)) == 9
        return time.perf_counter() - start


def first_result(method):
    """A fresh interpreter per iteration makes a pool and takes one result;
    the time counted is measured inside it (its own start-up is not)."""
    def run(count):
        total = 0.0
        for _ in range(count):
            out = subprocess.run([sys.executable, __file__, "--first-result", method],
                                 check=True, capture_output=True, text=True).stdout
            total += float(out)
        return total
    return run


SCENARIOS = {
    "pool.first-result.forkserver": first_result("forkserver"),
    "pool.first-result.fork": first_result("fork"),
    "manager.list": manager_list,
    "manager.set": manager_set,
    "manager.dict": manager_dict,
    "pool.map": pool_map,
    "pool.apply": pool_apply,
    "pool.imap.lazy": pool_imap_lazy,
    "queue.int": queue_ints,
    "queue.bytes": queue_bytes,
    "value.locked": locked_value,
    "array.raw": raw_array,
    "pipe.pingpong": pipe_pingpong,
    "pipe.bytes": pipe_bytes,
    "process.fork": process_start_join("fork"),
    "process.spawn": process_start_join("spawn"),
    "process.forkserver": process_start_join("forkserver"),
    "os.fork": bare_fork,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--first-result", choices=["fork", "forkserver"], help="(in a fresh interpreter of first_result)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--count", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--pin", action="store_true", help="run on CPU 0 only, children too")
    args = parser.parse_args()
    if args.first_result:
        print(first_result_in(args.first_result))
        return
    if args.pin:
        os.sched_setaffinity(0, {0})
    run = SCENARIOS[args.scenario]
    run(max(1, args.count // 10))  # warm up (starts the forkserver, loads modules)
    seconds = []
    peak_growth = 0
    for _ in range(args.repeats):
        # The peak resident size is reset to the current one (Linux 4.0+).
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        rss = status_bytes("VmRSS:")
        start = time.perf_counter()
        measured = run(args.count)  # some scenarios time themselves
        seconds.append(measured if measured is not None else time.perf_counter() - start)
        peak_growth = max(peak_growth, status_bytes("VmHWM:") - rss)
    json.dump({"seconds": seconds, "peak_growth": peak_growth}, sys.stdout)


if __name__ == "__main__":
    main()
