#include <stdio.h>
#include <sys/utsname.h>

int main(int argc, char **argv) {
    struct utsname host;
    if (uname(&host) != 0) {
        perror("uname");
        return 1;
    }
    printf("hello from a C program built by kiln, running on %s\n", host.sysname);
    for (int i = 1; i < argc; i++) {
        printf("argument %d: %s\n", i, argv[i]);
    }
    return 0;
}
