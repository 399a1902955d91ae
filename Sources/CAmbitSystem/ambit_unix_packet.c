#define _GNU_SOURCE
#include "ambit_unix_packet.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifdef __linux__
#include <sched.h>
#include <sys/ioctl.h>
#include <linux/nsfs.h>
#endif

static int fill_address(struct sockaddr_un *address, const char *path) {
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    size_t length = strlen(path);
    if (length == 0 || length >= sizeof address->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(address->sun_path, path, length);
    return 0;
}

int ambit_seqpacket_connect(const char *path) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int ambit_seqpacket_listen(const char *path, int backlog) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, backlog) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

ssize_t ambit_seqpacket_receive(int fd, void *buffer, size_t capacity, int *fds, int max_fds, int *fd_count, int *flags) {
    // Room for more descriptors than wanted, so that extras are seen (and closed) rather
    // than silently cut off.
    enum { room = 16 };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * room)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec vector = {.iov_base = buffer, .iov_len = capacity};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof control.bytes;
    *fd_count = 0;
    *flags = 0;
    ssize_t received;
    do {
        received = recvmsg(fd, &message, MSG_CMSG_CLOEXEC);
    } while (received < 0 && errno == EINTR);
    if (received < 0) return -1;
    if (message.msg_flags & MSG_TRUNC) *flags |= 1;
    if (message.msg_flags & MSG_CTRUNC) *flags |= 2;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *passed = (int *)CMSG_DATA(header);
        for (size_t index = 0; index < count; index++) {
            int descriptor;
            memcpy(&descriptor, passed + index, sizeof descriptor);
            if (*fd_count < max_fds) {
                fds[(*fd_count)++] = descriptor;
            } else {
                close(descriptor);
                *flags |= 2;
            }
        }
    }
    return received;
}

ssize_t ambit_seqpacket_send(int fd, const void *buffer, size_t length, const int *fds, int fd_count) {
    struct iovec vector = {.iov_base = (void *)buffer, .iov_len = length};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    enum { room = 16 };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * room)];
        struct cmsghdr align;
    } control;
    if (fd_count > 0) {
        if (fd_count > room) {
            errno = EINVAL;
            return -1;
        }
        memset(&control, 0, sizeof control);
        message.msg_control = control.bytes;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * fd_count);
    }
    ssize_t sent;
    do {
        sent = sendmsg(fd, &message, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

int ambit_namespace_type(int fd) {
#if defined(__linux__) && defined(NS_GET_NSTYPE)
    return ioctl(fd, NS_GET_NSTYPE);
#else
    (void)fd;
    errno = ENOTTY;
    return -1;
#endif
}

int ambit_clone_newnet(void) {
#ifdef __linux__
    return CLONE_NEWNET;
#else
    return 0;
#endif
}
