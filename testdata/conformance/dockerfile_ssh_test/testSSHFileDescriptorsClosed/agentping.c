/* Asks the agent at $SSH_AUTH_SOCK for its identities once (as `ssh-add -l`
   or an ssh client would) and closes the connection: what the ssh client of
   BuildKit's test does, without openssh in the image. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (path == NULL || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "agentping: SSH_AUTH_SOCK is not set\n");
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("agentping: connect");
        return 1;
    }
    /* SSH2_AGENTC_REQUEST_IDENTITIES: length 1, type 11 */
    const unsigned char request[] = {0, 0, 0, 1, 11};
    if (write(fd, request, sizeof request) != sizeof request) {
        perror("agentping: write");
        return 1;
    }
    unsigned char answer[5];
    size_t got = 0;
    while (got < sizeof answer) {
        ssize_t n = read(fd, answer + got, sizeof answer - got);
        if (n <= 0) {
            fprintf(stderr, "agentping: the agent did not answer\n");
            return 1;
        }
        got += (size_t)n;
    }
    /* SSH2_AGENT_IDENTITIES_ANSWER */
    if (answer[4] != 12) {
        fprintf(stderr, "agentping: unexpected answer type %d\n", answer[4]);
        return 1;
    }
    close(fd);
    printf("agent answered\n");
    return 0;
}
