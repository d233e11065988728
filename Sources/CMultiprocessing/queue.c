#define _GNU_SOURCE
#include "CMultiprocessing.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <string.h>
#include <time.h>

static unsigned char *ring_of(cmp_queue_t *queue) { return (unsigned char *)(queue + 1); }

size_t cmp_queue_size(uint64_t capacity) { return sizeof(cmp_queue_t) + (size_t)capacity; }

static int each_range(cmp_queue_t *queue, int fd, int mode, uint64_t from, uint64_t to, int consumed);
#define SPARSE_STEP ((uint64_t)1 << 20)



int cmp_queue_init(cmp_queue_t *queue, int fd, uint64_t capacity, uint64_t max_messages, int sparse) {
    memset(queue, 0, sizeof *queue);
    queue->capacity = capacity;
    queue->max_messages = max_messages;
    queue->sparse = sparse ? 1 : 0;
    if (sparse) {
        /* The ring's first pages have memory for good (see rewind_if_empty). */
        uint64_t keep = capacity - CMP_QUEUE_SPARSE_SLACK;
        if (keep > SPARSE_STEP) keep = SPARSE_STEP;
        int rc = each_range(queue, fd, FALLOC_FL_KEEP_SIZE, 0, keep, 0);
        if (rc) return rc == ENOSPC ? ENOMEM : rc;
        queue->keep = keep;
        queue->committed = keep;
    }
    int rc = cmp_lock_init(&queue->mutex, 0);
    if (!rc) rc = cmp_lock_init(&queue->writer, 0);
    if (!rc) rc = cmp_lock_init(&queue->reader, 0);
    return rc;
}

/* The mutex guards counters that are each published by a single store, so
   a holder that died left them consistent: recovering is just going on. */
static void lock_mutex(cmp_queue_t *queue) { cmp_lock_acquire(&queue->mutex, -1); }
static void unlock_mutex(cmp_queue_t *queue) { cmp_lock_release(&queue->mutex); }

/* Waits on `condition`; ETIMEDOUT once `deadline` (if any) passes. */
static int wait_on(cmp_queue_t *queue, cmp_futex_condition_t *condition, const struct timespec *deadline) {
    int rc = cmp_futex_condition_wait_spinning(condition, &queue->mutex, deadline, 1000);
    if (rc == ETIMEDOUT && deadline) {
        /* A futex may report a timeout a hair early or late: trust the clock. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec < deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec < deadline->tv_nsec)) rc = 0;
    }
    return rc;
}

static void write_whole(cmp_queue_t *queue, const void *bytes, uint64_t length);

/* ---- The sparse ring's memory ---- */

/* Pages are allocated and given back SPARSE_STEP bytes at a time. */
#define PAGE ((uint64_t)4096)

/* Calls `fallocate(fd, mode, …)` on the file range of ring positions
   [from, to) (at most one lap). To allocate (`consumed` 0): every page the
   range touches. To give back (`consumed` 1, [from, to) being read, and
   everything before `from` too): every page that ends by `to`, except
   those of the ring's first `keep` bytes (and so the one the queue's header
   shares with the ring), which keep their memory for good. */
static int each_range(cmp_queue_t *queue, int fd, int mode, uint64_t from, uint64_t to, int consumed) {
    uint64_t base = (uint64_t)((unsigned char *)ring_of(queue) - (unsigned char *)queue);
    uint64_t first_free = (base + queue->keep + PAGE - 1) / PAGE * PAGE;
    while (from < to) {
        uint64_t offset = from % queue->capacity;
        uint64_t piece = queue->capacity - offset < to - from ? queue->capacity - offset : to - from;
        uint64_t start = base + offset, end = base + offset + piece;
        uint64_t first = start / PAGE * PAGE;
        uint64_t last = consumed ? end / PAGE * PAGE : (end + PAGE - 1) / PAGE * PAGE;
        if (consumed && first < first_free) first = first_free;
        if (last > first) {
            int rc;
            /* To allocate, prefault the pages writable in this process too, in
               one call (each write would otherwise fault page by page);
               kernels before 5.14 lack it: allocate only. */
            if (!consumed) {
                do rc = madvise((unsigned char *)queue + first, (size_t)(last - first), MADV_POPULATE_WRITE);
                while (rc != 0 && errno == EINTR);
                if (rc == 0) { from += piece; continue; }
                if (errno != EINVAL) return errno;
            }
            do rc = fallocate(fd, mode, (off_t)first, (off_t)(last - first));
            while (rc != 0 && errno == EINTR);
            if (rc != 0) return errno;
        }
        from += piece;
    }
    return 0;
}

/* How far writers may go: a lap ahead of what was given back, less the
   slack that keeps them off the pages a give-back may still punch (it
   frees the page holding `released`, whose start was read before it). */
static uint64_t sparse_limit(cmp_queue_t *queue) { return queue->released + queue->capacity - CMP_QUEUE_SPARSE_SLACK; }

/* With the mutex held: memory for ring positions up to `end`, and a step
   beyond (never past `sparse_limit`). 0, or ENOMEM. */
static int commit_to(cmp_queue_t *queue, int fd, uint64_t end) {
    if (!queue->sparse || end <= queue->committed) return 0;
    uint64_t limit = sparse_limit(queue);
    uint64_t target = end + SPARSE_STEP < limit ? end + SPARSE_STEP : limit;
    int rc = each_range(queue, fd, FALLOC_FL_KEEP_SIZE, queue->committed, target, 0);
    if (rc) return rc == ENOSPC ? ENOMEM : rc;
    __atomic_store_n(&queue->committed, target, __ATOMIC_RELEASE);
    return 0;
}

/* With the mutex held: gives back the pages wholly behind the readers.
   A page only partly behind `read` keeps its memory until the readers pass it. */
static void release_all_read(cmp_queue_t *queue, int fd) {
    each_range(queue, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, queue->released, queue->read, 1);
    __atomic_store_n(&queue->released, queue->read, __ATOMIC_RELEASE);
}

/* After a read: the same, a step at a time. */
static void release_read(cmp_queue_t *queue, int fd) {
    if (queue->sparse && queue->read - queue->released >= SPARSE_STEP) release_all_read(queue, fd);
}

/* With the mutex held, after a read: once every message put has been
   taken, and nobody is in the middle of one, the positions go back to the
   ring's start, whose pages have memory already, and whatever memory the
   ring had beyond them is given back. A queue that empties now and then
   so keeps using the same few warm pages, with no system call. */
static void rewind_if_empty(cmp_queue_t *queue, int fd) {
    if (!queue->sparse || queue->read != queue->written || queue->writer_busy || queue->reader_busy
        || queue->writer_remaining > 0 || queue->reader_remaining > 0) return;
    if (queue->committed > queue->keep || queue->released > 0) {
        uint64_t base = (uint64_t)((unsigned char *)ring_of(queue) - (unsigned char *)queue);
        uint64_t first = (base + queue->keep + PAGE - 1) / PAGE * PAGE;
        uint64_t last = (base + queue->capacity + PAGE - 1) / PAGE * PAGE;
        int rc;
        do rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)first, (off_t)(last - first));
        while (rc != 0 && errno == EINTR);
        __atomic_store_n(&queue->committed, queue->keep, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&queue->released, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->read, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->written, 0, __ATOMIC_RELEASE);
}

static void copy_in(cmp_queue_t *queue, uint64_t position, const unsigned char *bytes, uint64_t count);
static void copy_out(cmp_queue_t *queue, uint64_t position, unsigned char *bytes, uint64_t count);

/* Messages up to this size are copied into a sparse ring under the mutex;
   larger ones outside it, so that readers go on meanwhile. */
#define SPARSE_SMALL ((uint64_t)16 << 10)

/* With the mutex held: room for `total` more bytes, and their memory. 0,
   ENOSPC (the ceiling), or ENOMEM. */
static int sparse_room(cmp_queue_t *queue, int fd, uint64_t total) {
    /* Full but for what was read since the last step: give that back now. */
    if (queue->written + total > sparse_limit(queue) && queue->read > queue->released) release_all_read(queue, fd);
    return queue->written + total > sparse_limit(queue) ? ENOSPC : commit_to(queue, fd, queue->written + total);
}

/* A sparse queue's put: never waits for room. A small message is written
   whole under the mutex. A large one (or any while a large one is being
   written) is written by the holder of the writer lock beyond `written`,
   where no reader looks, without the mutex, and appears when `written`
   moves; a writer that dies meanwhile leaves nothing visible. */
static int put_sparse(cmp_queue_t *queue, int fd, const void *bytes, uint64_t length) {
    uint64_t total = 8 + length + 1;
    if (total > queue->capacity - CMP_QUEUE_SPARSE_SLACK) return ENOSPC;
    lock_mutex(queue);
    if (total <= SPARSE_SMALL && !queue->writer_busy) {
        int rc = sparse_room(queue, fd, total);
        if (!rc) {
            __atomic_store_n(&queue->unfinished, queue->unfinished + 1, __ATOMIC_RELEASE);
            write_whole(queue, bytes, length);
        }
        unlock_mutex(queue);
        return rc;
    }
    unlock_mutex(queue);
    int rc = cmp_lock_acquire(&queue->writer, -1);
    if (rc == EOWNERDEAD) rc = 0;  /* its writer died before it appeared: nothing to repair */
    if (rc) return rc;
    lock_mutex(queue);
    __atomic_store_n(&queue->writer_busy, 1, __ATOMIC_RELEASE);
    rc = sparse_room(queue, fd, total);
    uint64_t position = queue->written;
    unlock_mutex(queue);
    if (!rc) {
        unsigned char trailer = 1;
        copy_in(queue, position, (const unsigned char *)&length, 8);
        copy_in(queue, position + 8, bytes, length);
        copy_in(queue, position + 8 + length, &trailer, 1);
    }
    lock_mutex(queue);
    if (!rc) {
        __atomic_store_n(&queue->unfinished, queue->unfinished + 1, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->messages_written, queue->messages_written + 1, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->written, position + total, __ATOMIC_RELEASE);
        cmp_futex_condition_signal(&queue->not_empty, 0);
    }
    __atomic_store_n(&queue->writer_busy, 0, __ATOMIC_RELEASE);
    unlock_mutex(queue);
    cmp_lock_release(&queue->writer);
    return rc;
}

/* A sparse queue's reader, holding the reader lock, takes `count` bytes of
   a message that is whole in the ring: copied without the mutex (writers
   write only beyond `written`), then `read` moves. */
static void read_sparse(cmp_queue_t *queue, int fd, unsigned char *bytes, uint64_t count) {
    uint64_t position = __atomic_load_n(&queue->read, __ATOMIC_ACQUIRE);
    copy_out(queue, position, bytes, count);
    lock_mutex(queue);
    __atomic_store_n(&queue->read, position + count, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->reader_remaining, queue->reader_remaining - count, __ATOMIC_RELEASE);
    release_read(queue, fd);
    cmp_futex_condition_signal(&queue->not_full, 0);
    unlock_mutex(queue);
}

static void copy_in(cmp_queue_t *queue, uint64_t position, const unsigned char *bytes, uint64_t count) {
    uint64_t offset = position % queue->capacity;
    uint64_t first = queue->capacity - offset < count ? queue->capacity - offset : count;
    memcpy(ring_of(queue) + offset, bytes, (size_t)first);
    if (count > first) memcpy(ring_of(queue), bytes + first, (size_t)(count - first));
}

static void copy_out(cmp_queue_t *queue, uint64_t position, unsigned char *bytes, uint64_t count) {
    uint64_t offset = position % queue->capacity;
    uint64_t first = queue->capacity - offset < count ? queue->capacity - offset : count;
    if (bytes) {
        memcpy(bytes, ring_of(queue) + offset, (size_t)first);
        if (count > first) memcpy(bytes + first, ring_of(queue), (size_t)(count - first));
    }
}

/* Writes `count` bytes (NULL: zeros) in pieces as room appears; with the
   writer lock held. A message once begun is written to its end (readers are
   draining), so only a repair passes a `deadline`: ETIMEDOUT then, with the
   progress kept in `writer_remaining` for the next writer. */
static int write_stream(cmp_queue_t *queue, const unsigned char *bytes, uint64_t count, const struct timespec *deadline) {
    static const unsigned char zeros[4096];
    while (count > 0) {
        lock_mutex(queue);
        uint64_t free_bytes;
        while ((free_bytes = queue->capacity - (queue->written - queue->read)) == 0) {
            if (wait_on(queue, &queue->not_full, deadline) == ETIMEDOUT) {
                unlock_mutex(queue);
                return ETIMEDOUT;
            }
        }
        uint64_t piece = count < free_bytes ? count : free_bytes;
        if (!bytes && piece > sizeof zeros) piece = sizeof zeros;
        copy_in(queue, queue->written, bytes ? bytes : zeros, piece);
        __atomic_store_n(&queue->written, queue->written + piece, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->writer_remaining, queue->writer_remaining - piece, __ATOMIC_RELEASE);
        cmp_futex_condition_signal(&queue->not_empty, 0);
        unlock_mutex(queue);
        if (bytes) bytes += piece;
        count -= piece;
    }
    return 0;
}

/* A writer died in the middle of a message: finish it as abandoned — the
   rest of its length header, zeros for the payload, and a 0 trailer. */
static int repair_writer(cmp_queue_t *queue, const struct timespec *deadline) {
    int rc = 0;
    uint64_t length = queue->writer_length;
    uint64_t remaining = queue->writer_remaining;
    uint64_t done = 8 + length + 1 - remaining;
    if (remaining > 0 && done < 8) {
        rc = write_stream(queue, (const unsigned char *)&length + done, 8 - done, deadline);
        if (rc) return rc;
        done = 8;
    }
    if (remaining > 0 && done < 8 + length) {
        rc = write_stream(queue, NULL, 8 + length - done, deadline);
        if (rc) return rc;
    }
    if (queue->writer_remaining > 0) {
        unsigned char abandoned = 0;
        rc = write_stream(queue, &abandoned, 1, deadline);
    }
    return rc;
}

/* Room for one more message of `total` bytes that fits the ring. */
static int has_room(cmp_queue_t *queue, uint64_t total) {
    return queue->messages_written - queue->messages_read < queue->max_messages
        && queue->capacity - (queue->written - queue->read) >= total;
}

/* Writes a whole message that fits the free room, with the mutex held:
   nothing is visible until `written` moves. */
static void write_whole(cmp_queue_t *queue, const void *bytes, uint64_t length) {
    unsigned char trailer = 1;
    uint64_t position = queue->written;
    copy_in(queue, position, (const unsigned char *)&length, 8);
    copy_in(queue, position + 8, bytes, length);
    copy_in(queue, position + 8 + length, &trailer, 1);
    __atomic_store_n(&queue->messages_written, queue->messages_written + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->written, position + 8 + length + 1, __ATOMIC_RELEASE);
    cmp_futex_condition_signal(&queue->not_empty, 0);
}

/* Puts a message that fits the ring under the mutex alone, unless a writer
   holds the writer lock: 0, ETIMEDOUT, or EAGAIN (take the writer lock). */
static int put_small(cmp_queue_t *queue, const void *bytes, uint64_t length, long long timeout_ns, const struct timespec *deadline) {
    uint64_t total = 8 + length + 1;
    lock_mutex(queue);
    for (;;) {
        /* A writer holds the lock, or one died inside a message that the
           next holder of the lock must finish first. */
        if (queue->writer_busy || queue->writer_remaining > 0) {
            unlock_mutex(queue);
            return EAGAIN;
        }
        if (has_room(queue, total)) break;
        if (timeout_ns == 0) {
            unlock_mutex(queue);
            return ETIMEDOUT;
        }
        int rc = wait_on(queue, &queue->not_full, timeout_ns > 0 ? deadline : NULL);
        if (rc) {
            unlock_mutex(queue);
            return rc;
        }
    }
    __atomic_store_n(&queue->unfinished, queue->unfinished + 1, __ATOMIC_RELEASE);
    write_whole(queue, bytes, length);
    unlock_mutex(queue);
    return 0;
}

static void set_busy(cmp_queue_t *queue, uint32_t *flag, uint32_t value) {
    lock_mutex(queue);
    __atomic_store_n(flag, value, __ATOMIC_RELEASE);
    unlock_mutex(queue);
}

int cmp_queue_put(cmp_queue_t *queue, int fd, const void *bytes, uint64_t length, long long timeout_ns) {
    if (queue->sparse) return put_sparse(queue, fd, bytes, length);
    struct timespec deadline;
    if (timeout_ns > 0) deadline = cmp_deadline_after(timeout_ns);
    if (8 + length + 1 <= queue->capacity) {
        int fast = put_small(queue, bytes, length, timeout_ns, &deadline);
        if (fast != EAGAIN) return fast;
    }
    int rc = cmp_lock_acquire(&queue->writer, timeout_ns);
    if (rc == EOWNERDEAD) rc = 0;
    if (rc) return rc;
    set_busy(queue, &queue->writer_busy, 1);
    if (__atomic_load_n(&queue->writer_remaining, __ATOMIC_ACQUIRE) > 0) {
        /* Writers finish what they begin before letting go: this message's
           writer died. Finish it as abandoned (or as far as room allows). */
        struct timespec now_deadline = cmp_deadline_after(0);
        rc = repair_writer(queue, timeout_ns < 0 ? NULL : timeout_ns == 0 ? &now_deadline : &deadline);
        if (rc) {
            set_busy(queue, &queue->writer_busy, 0);
            cmp_lock_release(&queue->writer);
            return rc;
        }
    }
    uint64_t total = 8 + length + 1;
    lock_mutex(queue);
    /* Room for one more message, and (if it fits the ring) for all of it. */
    for (;;) {
        int room = queue->messages_written - queue->messages_read < queue->max_messages;
        uint64_t free_bytes = queue->capacity - (queue->written - queue->read);
        if (room && (free_bytes >= total || (total > queue->capacity && free_bytes > 0))) break;
        if (timeout_ns == 0) { rc = ETIMEDOUT; break; }
        rc = wait_on(queue, &queue->not_full, timeout_ns > 0 ? &deadline : NULL);
        if (rc) break;
    }
    if (rc) {
        __atomic_store_n(&queue->writer_busy, 0, __ATOMIC_RELEASE);
        unlock_mutex(queue);
        cmp_lock_release(&queue->writer);
        return rc;
    }
    __atomic_store_n(&queue->unfinished, queue->unfinished + 1, __ATOMIC_RELEASE);
    unsigned char trailer = 1;
    if (total <= queue->capacity - (queue->written - queue->read)) {
        write_whole(queue, bytes, length);
        unlock_mutex(queue);
    } else {
        __atomic_store_n(&queue->writer_length, length, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->writer_remaining, total, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->messages_written, queue->messages_written + 1, __ATOMIC_RELEASE);
        unlock_mutex(queue);
        write_stream(queue, (const unsigned char *)&length, 8, NULL);
        write_stream(queue, bytes, length, NULL);
        write_stream(queue, &trailer, 1, NULL);
    }
    set_busy(queue, &queue->writer_busy, 0);
    return cmp_lock_release(&queue->writer);
}

/* Reads `count` bytes (NULL: discards) as they arrive; with the reader lock
   held. Only skipping a dead reader's message passes a `deadline`. */
static int read_stream(cmp_queue_t *queue, int fd, unsigned char *bytes, uint64_t count, const struct timespec *deadline) {
    while (count > 0) {
        lock_mutex(queue);
        uint64_t available;
        while ((available = queue->written - queue->read) == 0) {
            if (wait_on(queue, &queue->not_empty, deadline) == ETIMEDOUT) {
                unlock_mutex(queue);
                return ETIMEDOUT;
            }
        }
        uint64_t piece = count < available ? count : available;
        copy_out(queue, queue->read, bytes, piece);
        __atomic_store_n(&queue->read, queue->read + piece, __ATOMIC_RELEASE);
        __atomic_store_n(&queue->reader_remaining, queue->reader_remaining - piece, __ATOMIC_RELEASE);
        release_read(queue, fd);
        cmp_futex_condition_signal(&queue->not_full, 0);
        unlock_mutex(queue);
        if (bytes) bytes += piece;
        count -= piece;
    }
    return 0;
}

int cmp_queue_get_begin(cmp_queue_t *queue, int fd, long long timeout_ns, uint64_t *length) {
    struct timespec deadline;
    if (timeout_ns > 0) deadline = cmp_deadline_after(timeout_ns);
    int rc = cmp_lock_acquire(&queue->reader, timeout_ns);
    if (rc == EOWNERDEAD) rc = 0;
    if (rc) return rc;
    set_busy(queue, &queue->reader_busy, 1);
    if (__atomic_load_n(&queue->reader_remaining, __ATOMIC_ACQUIRE) > 0) {
        /* Readers finish what they begin: this one died inside a message,
           and the rest of that message goes too. */
        struct timespec now_deadline = cmp_deadline_after(0);
        rc = read_stream(queue, fd, NULL, queue->reader_remaining, timeout_ns < 0 ? NULL : timeout_ns == 0 ? &now_deadline : &deadline);
        if (rc) {
            set_busy(queue, &queue->reader_busy, 0);
            cmp_lock_release(&queue->reader);
            return rc;
        }
    }
    lock_mutex(queue);
    while (queue->messages_written == queue->messages_read || queue->written - queue->read < 8) {
        if (timeout_ns == 0) { rc = ETIMEDOUT; break; }
        rc = wait_on(queue, &queue->not_empty, timeout_ns > 0 ? &deadline : NULL);
        if (rc) break;
    }
    if (rc) {
        __atomic_store_n(&queue->reader_busy, 0, __ATOMIC_RELEASE);
        unlock_mutex(queue);
        cmp_lock_release(&queue->reader);
        return rc;
    }
    copy_out(queue, queue->read, (unsigned char *)length, 8);
    __atomic_store_n(&queue->reader_remaining, *length + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->read, queue->read + 8, __ATOMIC_RELEASE);
    __atomic_store_n(&queue->messages_read, queue->messages_read + 1, __ATOMIC_RELEASE);
    cmp_futex_condition_signal(&queue->not_full, 1);
    unlock_mutex(queue);
    return 0;
}

int cmp_queue_get_finish(cmp_queue_t *queue, int fd, void *bytes, uint64_t length) {
    unsigned char trailer = 0;
    if (queue->sparse) {
        /* Its writer published it whole. */
        read_sparse(queue, fd, bytes, length);
        read_sparse(queue, fd, &trailer, 1);
    } else {
        read_stream(queue, fd, bytes, length, NULL);
        read_stream(queue, fd, &trailer, 1, NULL);
    }
    lock_mutex(queue);
    __atomic_store_n(&queue->reader_busy, 0, __ATOMIC_RELEASE);
    rewind_if_empty(queue, fd);
    unlock_mutex(queue);
    cmp_lock_release(&queue->reader);
    return trailer == 1 ? 0 : ECANCELED;
}

int cmp_queue_get_small(cmp_queue_t *queue, int fd, void *bytes, uint64_t capacity, uint64_t *length, long long timeout_ns) {
    struct timespec deadline;
    if (timeout_ns > 0) deadline = cmp_deadline_after(timeout_ns);
    lock_mutex(queue);
    for (;;) {
        if (queue->reader_busy || queue->reader_remaining > 0) break;
        uint64_t available = queue->written - queue->read;
        if (queue->messages_written != queue->messages_read && available >= 8) {
            copy_out(queue, queue->read, (unsigned char *)length, 8);
            /* Whole in the ring, and small enough: take it in one step. */
            if (*length > capacity || available < 8 + *length + 1) break;
            unsigned char trailer = 0;
            copy_out(queue, queue->read + 8, bytes, *length);
            copy_out(queue, queue->read + 8 + *length, &trailer, 1);
            __atomic_store_n(&queue->read, queue->read + 8 + *length + 1, __ATOMIC_RELEASE);
            __atomic_store_n(&queue->messages_read, queue->messages_read + 1, __ATOMIC_RELEASE);
            release_read(queue, fd);
            rewind_if_empty(queue, fd);
            cmp_futex_condition_signal(&queue->not_full, 1);
            unlock_mutex(queue);
            return trailer == 1 ? 0 : ECANCELED;
        }
        if (timeout_ns == 0) {
            unlock_mutex(queue);
            return ETIMEDOUT;
        }
        int rc = wait_on(queue, &queue->not_empty, timeout_ns > 0 ? &deadline : NULL);
        if (rc) {
            unlock_mutex(queue);
            return rc;
        }
    }
    unlock_mutex(queue);
    return EAGAIN;
}

uint64_t cmp_queue_count(cmp_queue_t *queue) {
    uint64_t written = __atomic_load_n(&queue->messages_written, __ATOMIC_ACQUIRE);
    uint64_t read = __atomic_load_n(&queue->messages_read, __ATOMIC_ACQUIRE);
    return written > read ? written - read : 0;
}

int cmp_queue_task_done(cmp_queue_t *queue) {
    lock_mutex(queue);
    if (queue->unfinished <= 0) {
        unlock_mutex(queue);
        return ERANGE;
    }
    __atomic_store_n(&queue->unfinished, queue->unfinished - 1, __ATOMIC_RELEASE);
    if (queue->unfinished == 0) cmp_futex_condition_signal(&queue->all_done, 1);
    unlock_mutex(queue);
    return 0;
}

int cmp_queue_join(cmp_queue_t *queue, long long timeout_ns) {
    struct timespec deadline;
    if (timeout_ns > 0) deadline = cmp_deadline_after(timeout_ns);
    lock_mutex(queue);
    int rc = 0;
    while (queue->unfinished > 0) {
        if (timeout_ns == 0) { rc = ETIMEDOUT; break; }
        rc = wait_on(queue, &queue->all_done, timeout_ns > 0 ? &deadline : NULL);
        if (rc) break;
    }
    unlock_mutex(queue);
    return rc;
}
