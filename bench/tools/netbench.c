// netbench: the benchmark's small, dependency-free network client and server.
//
//   netbench server PORT              epoll echo server (any number of connections)
//   netbench rr HOST PORT N SIZE      N request/response round trips of SIZE bytes on one
//                                     persistent connection; prints latency percentiles
//   netbench crr HOST PORT N SIZE     N times: connect, one SIZE round trip, close
//   netbench hold HOST PORT N         opens N connections, proves each with a 1-byte
//                                     round trip, prints "ready N", holds them until stdin
//                                     closes
//
// rr/crr print one JSON object: {"n":…, "p50_us":…, "p99_us":…, "mean_us":…, "errors":…}.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int connect_to(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void report(double *samples, int n, int errors) {
    if (n == 0) {
        printf("{\"n\": 0, \"errors\": %d}\n", errors);
        return;
    }
    qsort(samples, n, sizeof(double), cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += samples[i];
    int p99 = (int)(n * 0.99);
    if (p99 >= n) p99 = n - 1;
    printf("{\"n\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"errors\": %d}\n", n,
           samples[n / 2], samples[p99], sum / n, errors);
}

static int run_rr(const char *host, int port, int n, int size, int reconnect) {
    char *out = malloc(size), *in = malloc(size);
    double *samples = calloc(n, sizeof(double));
    memset(out, 'x', size);
    int errors = 0, done = 0;
    int fd = reconnect ? -1 : connect_to(host, port);
    if (!reconnect && fd < 0) {
        fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(errno));
        return 1;
    }
    // Warm-up: a few round trips not counted (pooled tunnels, caches).
    for (int i = 0; i < 10 && !reconnect; i++) {
        if (write_all(fd, out, size) || read_all(fd, in, size)) return 1;
    }
    for (int i = 0; i < n; i++) {
        double start = now_us();
        if (reconnect) {
            fd = connect_to(host, port);
            if (fd < 0) {
                errors++;
                continue;
            }
        }
        if (write_all(fd, out, size) || read_all(fd, in, size)) {
            errors++;
            if (!reconnect) return 1;
        }
        if (reconnect) close(fd);
        samples[done++] = now_us() - start;
    }
    if (!reconnect) close(fd);
    report(samples, done, errors);
    return errors > n / 100;
}

static int run_hold(const char *host, int port, int n) {
    int *fds = calloc(n, sizeof(int));
    char byte = 'h';
    for (int i = 0; i < n; i++) {
        fds[i] = connect_to(host, port);
        if (fds[i] < 0 || write_all(fds[i], &byte, 1) || read_all(fds[i], &byte, 1)) {
            fprintf(stderr, "connection %d of %d failed: %s\n", i + 1, n, strerror(errno));
            return 1;
        }
    }
    printf("ready %d\n", n);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    for (int i = 0; i < n; i++) close(fds[i]);
    return 0;
}

static int run_server(int port) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 4096)) {
        fprintf(stderr, "listen :%d: %s\n", port, strerror(errno));
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    static char buf[256 * 1024];
    struct epoll_event events[256];
    for (;;) {
        int ready = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, 0)) >= 0) {
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(ep, EPOLL_CTL_ADD, client, &cev);
                }
                continue;
            }
            // Blocking echo of what is there: the clients here wait for their echo.
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                continue;
            }
            if (write_all(fd, buf, (size_t)n)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "server")) return run_server(atoi(argv[2]));
    if (argc == 6 && !strcmp(argv[1], "rr")) return run_rr(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), 0);
    if (argc == 6 && !strcmp(argv[1], "crr")) return run_rr(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), 1);
    if (argc == 5 && !strcmp(argv[1], "hold")) return run_hold(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr,
            "usage: netbench server PORT | rr HOST PORT N SIZE | crr HOST PORT N SIZE | hold HOST PORT N\n");
    return 2;
}
