/* Asks the SSH agent at $SSH_AUTH_SOCK for its identities (SSH2_AGENTC_REQUEST_IDENTITIES)
 * and prints how many keys it holds. The corpus test builds it static with gcc, so that
 * busybox images can run it; busybox has no client for unix sockets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int read_all(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (!path) { puts("no SSH_AUTH_SOCK"); return 1; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 1; }
    unsigned char req[5] = { 0, 0, 0, 1, 11 };
    if (write(fd, req, sizeof req) != sizeof req) { perror("write"); return 1; }
    unsigned char head[9];
    if (read_all(fd, head, sizeof head) != 0 || head[4] != 12) { puts("bad answer"); return 1; }
    unsigned long keys = ((unsigned long)head[5] << 24) | (head[6] << 16) | (head[7] << 8) | head[8];
    printf("agent answered: %lu key(s)\n", keys);
    return 0;
}
