/* asuser UID GID CMD ARGS...: drop to a guest user (set*id), then exec CMD. */
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    gid_t gid = (gid_t)atoi(argv[2]);
    if (setgroups(1, &gid) || setgid(gid) || setuid((uid_t)atoi(argv[1]))) {
        perror("asuser");
        return 1;
    }
    execv(argv[3], argv + 3);
    perror("asuser: exec");
    return 127;
}
