/* Round-trip time of a one-byte ping-pong between two processes over a socketpair: what one
 * cross-process wake-up costs on this machine (docs/benchmarks.md, "Where the time goes").
 *   cc -O2 scripts/wakeup_pingpong.c -o /tmp/pingpong && /tmp/pingpong && taskset -c 0 /tmp/pingpong
 */
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    enum { ROUNDS = 20000 };
    int sv[2];
    char b = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
    if (fork() == 0) {
        for (int i = 0; i < ROUNDS; i++) {
            if (read(sv[1], &b, 1) != 1 || write(sv[1], &b, 1) != 1) return 1;
        }
        return 0;
    }
    struct timespec a, c;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < ROUNDS; i++) {
        if (write(sv[0], &b, 1) != 1 || read(sv[0], &b, 1) != 1) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &c);
    double ns = (c.tv_sec - a.tv_sec) * 1e9 + (c.tv_nsec - a.tv_nsec);
    printf("round trip: %.2f us\n", ns / ROUNDS / 1e3);
    return 0;
}
