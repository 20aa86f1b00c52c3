/* A server that waits for a connection on baton's socket (fd 3) through
 * io_uring (IORING_OP_ACCEPT), for tests/ready_accepting.rs: the accept is a
 * request inside the ring, with no epoll set and no thread in accept(2), so
 * `--ready accepting` cannot see it and must say so instead of passing.
 *
 *     cc -O2 -o uring_accept uring_accept.c && ./uring_accept
 *
 * Raw system calls (no liburing), so it builds with the C library alone.
 * Each connection it accepts is answered with a minimal HTTP response.
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int enter(int fd, unsigned submit, unsigned wait, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

int main(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = setup(4, &p);
    if (ring < 0) {
        perror("uring_accept: io_uring_setup (io_uring disabled on this kernel?)");
        return 2;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes =
        mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        perror("uring_accept: mmap");
        return 2;
    }
    unsigned *sq_tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    unsigned *sq_array = (unsigned *)(sq + p.sq_off.array);
    unsigned *cq_head = (unsigned *)(cq + p.cq_off.head);
    unsigned *cq_tail = (unsigned *)(cq + p.cq_off.tail);
    unsigned *cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    printf("uring_accept: pid %d waits for a connection on fd 3 through io_uring\n", getpid());
    fflush(stdout);
    for (;;) {
        unsigned tail = *sq_tail;
        unsigned idx = tail & *sq_mask;
        struct io_uring_sqe *sqe = &sqes[idx];
        memset(sqe, 0, sizeof *sqe);
        sqe->opcode = IORING_OP_ACCEPT;
        sqe->fd = 3;
        sq_array[idx] = idx;
        __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
        if (enter(ring, 1, 1, IORING_ENTER_GETEVENTS) < 0) {
            perror("uring_accept: io_uring_enter");
            return 1;
        }
        unsigned head = *cq_head;
        while (head != __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
            int conn = cqes[head & *cq_mask].res;
            head++;
            if (conn >= 0) {
                char buf[4096];
                (void)read(conn, buf, sizeof buf);
                const char *reply =
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
                (void)write(conn, reply, strlen(reply));
                close(conn);
            }
        }
        __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
    }
}
