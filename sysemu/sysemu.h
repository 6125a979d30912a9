/* Structures shared by sysemu.c and the cffi declarations (sysemu/_build.py). */
struct sysemu_notif {
    uint64_t id;
    uint32_t pid;
    int32_t nr;
    uint32_t arch;
    uint64_t ip;
    uint64_t args[6];
};

struct sysemu_event {
    int kind;
    int pid;
    int status;
    struct sysemu_notif n;
};
