#define _GNU_SOURCE
#include <malloc.h>
#include "ambit_system.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

static int with_sockaddr(int fd, const unsigned char *address, int length, unsigned short port, int connecting) {
    if (length == 4) {
        struct sockaddr_in in4;
        memset(&in4, 0, sizeof in4);
        in4.sin_family = AF_INET;
        in4.sin_port = htons(port);
        memcpy(&in4.sin_addr, address, 4);
        return connecting ? connect(fd, (struct sockaddr *)&in4, sizeof in4) : bind(fd, (struct sockaddr *)&in4, sizeof in4);
    }
    if (length == 16) {
        struct sockaddr_in6 in6;
        memset(&in6, 0, sizeof in6);
        in6.sin6_family = AF_INET6;
        in6.sin6_port = htons(port);
        memcpy(&in6.sin6_addr, address, 16);
        return connecting ? connect(fd, (struct sockaddr *)&in6, sizeof in6) : bind(fd, (struct sockaddr *)&in6, sizeof in6);
    }
    errno = EAFNOSUPPORT;
    return -1;
}

int ambit_bind_ip(int fd, const unsigned char *address, int length, unsigned short port) {
    return with_sockaddr(fd, address, length, port, 0);
}

int ambit_connect_ip(int fd, const unsigned char *address, int length, unsigned short port) {
    return with_sockaddr(fd, address, length, port, 1);
}

#ifdef __linux__
#include <sched.h>
#include <sys/vfs.h>

int ambit_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

long ambit_fs_magic(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return (long)info.f_type;
}
#else
int ambit_setns_net(int fd) { (void)fd; errno = ENOSYS; return -1; }
long ambit_fs_magic(int fd) { (void)fd; errno = ENOSYS; return -1; }
#endif

int ambit_malloc_trim(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

long long ambit_heap_in_use(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 info = mallinfo2();
    return (long long)(info.uordblks + info.hblkhd);
#else
    return -1;
#endif
}
