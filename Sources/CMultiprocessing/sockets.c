#define _GNU_SOURCE
#include "CMultiprocessing.h"

#include <errno.h>
#include <stddef.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int unix_address(const char *path, struct sockaddr_un *address, socklen_t *length) {
    size_t n = strlen(path);
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof address->sun_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(address->sun_path, path, n);
    if (path[0] == '@') address->sun_path[0] = '\0';
    *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
    return 0;
}

int cmp_listen_unix(const char *path, int backlog) {
    struct sockaddr_un address;
    socklen_t length;
    if (unix_address(path, &address, &length) == -1) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) return -1;
    if (bind(fd, (struct sockaddr *)&address, length) == -1 || listen(fd, backlog) == -1) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cmp_connect_unix(const char *path) {
    struct sockaddr_un address;
    socklen_t length;
    if (unix_address(path, &address, &length) == -1) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) return -1;
    while (connect(fd, (struct sockaddr *)&address, length) == -1) {
        if (errno == EINTR) continue;
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static struct addrinfo *resolve(const char *host, int port, int passive) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo *result = NULL;
    if (getaddrinfo(host, service, &hints, &result) != 0) {
        errno = EADDRNOTAVAIL;
        return NULL;
    }
    return result;
}

static void no_delay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int cmp_listen_tcp(const char *host, int port, int backlog, int *bound_port) {
    struct addrinfo *candidates = resolve(host, port, 1);
    if (candidates == NULL) return -1;
    int fd = -1, saved = EADDRNOTAVAIL;
    for (struct addrinfo *a = candidates; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd == -1) { saved = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(candidates);
    if (fd == -1) { errno = saved; return -1; }
    struct sockaddr_storage bound;
    socklen_t length = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &length) == 0) {
        if (bound.ss_family == AF_INET) *bound_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6) *bound_port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    return fd;
}

int cmp_connect_tcp(const char *host, int port) {
    struct addrinfo *candidates = resolve(host, port, 0);
    if (candidates == NULL) return -1;
    int fd = -1, saved = ECONNREFUSED;
    for (struct addrinfo *a = candidates; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd == -1) { saved = errno; continue; }
        int rc;
        do { rc = connect(fd, a->ai_addr, a->ai_addrlen); } while (rc == -1 && errno == EINTR);
        if (rc == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(candidates);
    if (fd == -1) { errno = saved; return -1; }
    no_delay(fd);
    return fd;
}

int cmp_accept(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1) return -1;
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) == 0 &&
        (address.ss_family == AF_INET || address.ss_family == AF_INET6)) {
        no_delay(fd);
    }
    return fd;
}
