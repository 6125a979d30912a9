/* Answers in the C loop: the calls the guest makes most, answered without
 * waking Python (compiled with sysemu.c; umlrun/fastpath.py is the other half):
 * getpid, gettid, getcwd; stat, lstat, newfstatat, readlink(at) and read-only
 * open(at) of a cached path; fstat of a descriptor of a known object.
 *
 * Python stays the authority. It hands C facts it has established, and C
 * answers only from those facts; anything else (a miss, an error, a flag C
 * does not know) goes to Python, which answers as it always does:
 *   - tasks: host tid -> guest tid and pid (getpid, gettid), and whether the
 *     task may use the path cache (its root is the jail's, it is the fake
 *     root, so a walk checks no permission) with its working directory;
 *   - paths: a guest path as the guest wrote it (joined to the cwd when
 *     relative) -> the host file the guest VFS walked to, its (dev, ino) and
 *     the owner the guest sees;
 *   - objects: (dev, ino) -> the owner the guest sees, for fstat;
 *   - absent names: a guest path whose walk met a name absent from a host
 *     directory (in an overlay: from the upper and the lower one, or hidden
 *     by a whiteout) -> those directories and that name: ENOENT.
 * Every use re-checks (dev, ino) on the host, so a file replaced or moved
 * from outside the jail falls back to Python; an absent name is re-checked
 * the same way (its directory's (dev, ino), the name still absent), so a name
 * made since, in the jail or from outside, is seen at once. Any call that could change what
 * a walk finds (a rename, a chmod, a chdir, a set*id...) revokes every grant
 * and the whole path cache: revoke() is one increment of a generation.
 */

#define FAST_TASK_SLOTS 8192 /* a power of two, over the jail's task limit */
#define FAST_PATH_SLOTS 4096 /* direct-mapped: a collision replaces */

struct fast_task {
    int tid;          /* 0: a free slot */
    int vtid, vtgid;
    uint64_t gen;     /* paths granted in this generation */
    int real_root;    /* its real and effective uids are 0 too: access() checks as root */
    char *cwd;        /* the guest cwd, "" for / */
    int cwdlen;
};

struct fast_path {
    uint64_t gen;
    char *key;
    int keylen;
    int follow;
    char *host;
    uint64_t dev, ino;
    long long uid, gid; /* -1: the host's, with the supervisor's own ids shown as 0 */
    int reg;          /* a regular file: may be opened read-only */
};

/* An object the guest holds a descriptor of: fstat answers from the host's
 * own stat of the descriptor, with the owner the guest sees. */
struct fast_object {
    uint64_t gen;
    uint64_t dev, ino;
    long long uid, gid; /* as fast_path; -2: two rules met (two mounts), ask Python */
};
#define FAST_OBJECT_SLOTS 4096

/* A guest path whose walk stopped at a name absent from a host directory.
 * Inside an overlay, two places: the upper directory (where the name is
 * absent, or the whiteout (wdev, wino) hides it) and the lower one. */
struct fast_absent {
    uint64_t gen;
    char *key;
    int keylen;
    int follow;       /* keyed as a fast_path is: a final symlink followed or not */
    int places;
    struct {
        char *dir, *path; /* the host directory, and it joined with the name */
        uint64_t dev, ino;
    } at[2];
    uint64_t wdev, wino; /* at[0]'s whiteout; wino 0: the name is absent there */
};
#define FAST_ABSENT_SLOTS 4096

static struct fast_task fast_tasks[FAST_TASK_SLOTS];
static struct fast_object fast_objects[FAST_OBJECT_SLOTS];
static struct fast_path fast_paths[FAST_PATH_SLOTS];
static uint64_t fast_gen = 1;
static struct fast_absent fast_absents[FAST_ABSENT_SLOTS];
static int fast_enabled;
static unsigned int own_uid[2], own_gid[2];
/* Run as root, every jail's own host id means "the guest" too: files a kept
 * overlay got from earlier jails (umlrun/hostids.py), and `nobody`, which
 * trees made by earlier versions of umlrun hold. Empty otherwise. */
static unsigned int own_first, own_count, own_legacy = (unsigned int)-1;
static unsigned long fast_answered;

static uint64_t fast_hash(const char *s, int len, int follow)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)follow;
    for (int i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static struct fast_task *task_slot(int tid, int insert)
{
    unsigned int i = ((unsigned int)tid * 2654435761u) & (FAST_TASK_SLOTS - 1);
    for (int n = 0; n < FAST_TASK_SLOTS; n++, i = (i + 1) & (FAST_TASK_SLOTS - 1)) {
        if (fast_tasks[i].tid == tid)
            return &fast_tasks[i];
        if (fast_tasks[i].tid == 0)
            return insert ? &fast_tasks[i] : NULL;
    }
    return NULL;
}

static void sysemu_fast_enable(int on, unsigned int uid0, unsigned int uid1, unsigned int gid0, unsigned int gid1)
{
    fast_enabled = on;
    own_uid[0] = uid0, own_uid[1] = uid1, own_gid[0] = gid0, own_gid[1] = gid1;
}

static void sysemu_fast_own_range(unsigned int first, unsigned int count, unsigned int legacy)
{
    own_first = first, own_count = count, own_legacy = legacy;
}

/* A task's ids; paths: 1, may it use the path cache (with this cwd) until the
 * next revoke; 3, and answer access() (its real and effective uids are 0). */
static int sysemu_fast_task(int tid, int vtid, int vtgid, int paths, const char *cwd, int cwdlen)
{
    struct fast_task *t = task_slot(tid, 1);
    if (t == NULL)
        return -ENOSPC;
    if (t->tid == 0) {
        t->tid = tid;
        t->cwd = NULL;
    }
    t->vtid = vtid;
    t->vtgid = vtgid;
    t->gen = 0;
    t->real_root = (paths & 3) == 3;
    paths &= 1;
    if (paths && t->cwd != NULL && t->cwdlen == cwdlen && !memcmp(t->cwd, cwd, cwdlen)) {
        t->gen = fast_gen; /* the same cwd: the common case, no copy */
    } else if (paths) {
        char *copy = malloc(cwdlen + 1);
        if (copy == NULL)
            return -ENOMEM;
        memcpy(copy, cwd, cwdlen);
        copy[cwdlen] = 0;
        free(t->cwd);
        t->cwd = copy;
        t->cwdlen = cwdlen;
        t->gen = fast_gen;
    }
    return 0;
}

/* A task is gone (or has exec'd): linear probing's deletion, shifting back
 * the entries that probed past its slot. */
static void sysemu_fast_forget(int tid)
{
    struct fast_task *t = task_slot(tid, 0);
    if (t == NULL)
        return;
    free(t->cwd);
    unsigned int i = t - fast_tasks, j = i;
    fast_tasks[i].tid = 0;
    fast_tasks[i].cwd = NULL;
    for (;;) {
        j = (j + 1) & (FAST_TASK_SLOTS - 1);
        if (fast_tasks[j].tid == 0)
            return;
        unsigned int home = ((unsigned int)fast_tasks[j].tid * 2654435761u) & (FAST_TASK_SLOTS - 1);
        /* Move j back to i unless its home lies cyclically in (i, j]. */
        if ((i < j) ? (home <= i || home > j) : (home <= i && home > j)) {
            fast_tasks[i] = fast_tasks[j];
            fast_tasks[j].tid = 0;
            fast_tasks[j].cwd = NULL;
            i = j;
        }
    }
}

static void sysemu_fast_revoke(void)
{
    fast_gen++;
}

static void absent_free(struct fast_absent *e)
{
    free(e->key);
    for (int i = 0; i < 2; i++)
        free(e->at[i].dir), free(e->at[i].path);
    memset(e, 0, sizeof *e);
}

static char *joined(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    char *p = malloc(dl + nl + 2);
    if (p != NULL) {
        memcpy(p, dir, dl);
        p[dl] = '/';
        memcpy(p + dl + 1, name, nl + 1);
    }
    return p;
}

/* key (as sysemu_fast_remember's, with follow) walks to `name`, absent
 * from host directory dir0 (dev0, ino0) -- or hidden there by the whiteout
 * (wdev, wino) when wino != 0 -- and from dir1 unless dir1 is "". */
static int sysemu_fast_absent(const char *key, int keylen, int follow, const char *name, const char *dir0,
                              uint64_t dev0, uint64_t ino0, uint64_t wdev, uint64_t wino, const char *dir1,
                              uint64_t dev1, uint64_t ino1)
{
    struct fast_absent *e = &fast_absents[fast_hash(key, keylen, follow) & (FAST_ABSENT_SLOTS - 1)];
    absent_free(e);
    e->key = malloc(keylen + 1);
    e->at[0].dir = strdup(dir0);
    e->at[0].path = joined(dir0, name);
    e->places = dir1[0] ? 2 : 1;
    if (e->places == 2) {
        e->at[1].dir = strdup(dir1);
        e->at[1].path = joined(dir1, name);
    }
    if (e->key == NULL || e->at[0].dir == NULL || e->at[0].path == NULL ||
        (e->places == 2 && (e->at[1].dir == NULL || e->at[1].path == NULL))) {
        absent_free(e);
        return -ENOMEM;
    }
    memcpy(e->key, key, keylen);
    e->key[keylen] = 0;
    e->keylen = keylen;
    e->follow = follow;
    e->at[0].dev = dev0, e->at[0].ino = ino0, e->at[1].dev = dev1, e->at[1].ino = ino1;
    e->wdev = wdev, e->wino = wino;
    e->gen = fast_gen;
    return 0;
}

static int sysemu_fast_remember(const char *key, int keylen, int follow, const char *host,
                                uint64_t dev, uint64_t ino, long long uid, long long gid, int reg)
{
    struct fast_path *p = &fast_paths[fast_hash(key, keylen, follow) & (FAST_PATH_SLOTS - 1)];
    char *k = malloc(keylen + 1), *h = strdup(host);
    if (k == NULL || h == NULL) {
        free(k);
        free(h);
        return -ENOMEM;
    }
    memcpy(k, key, keylen);
    k[keylen] = 0;
    free(p->key);
    free(p->host);
    *p = (struct fast_path){.gen = fast_gen, .key = k, .keylen = keylen, .follow = follow, .host = h,
                            .dev = dev, .ino = ino, .uid = uid, .gid = gid, .reg = reg};
    return 0;
}

static struct fast_object *object_slot(uint64_t dev, uint64_t ino)
{
    return &fast_objects[((dev * 1099511628211ULL) ^ ino) * 2654435761u % FAST_OBJECT_SLOTS];
}

static void sysemu_fast_object(uint64_t dev, uint64_t ino, long long uid, long long gid)
{
    struct fast_object *o = object_slot(dev, ino);
    if (o->gen == fast_gen && o->dev == dev && o->ino == ino) {
        if (o->uid != uid || o->gid != gid)
            o->uid = o->gid = -2;
        return;
    }
    *o = (struct fast_object){.gen = fast_gen, .dev = dev, .ino = ino, .uid = uid, .gid = gid};
}

static unsigned long sysemu_fast_answered(void)
{
    return fast_answered;
}

static struct fast_path *path_find(const char *key, int keylen, int follow)
{
    struct fast_path *p = &fast_paths[fast_hash(key, keylen, follow) & (FAST_PATH_SLOTS - 1)];
    if (p->gen != fast_gen || p->keylen != keylen || p->follow != follow || memcmp(p->key, key, keylen))
        return NULL;
    return p;
}

#define KEY_MAX 8192 /* a cwd and a path, each under PATH_MAX */

/* The key of the path the call names (path: read from the guest, n bytes) in
 * key (KEY_MAX bytes): its length, or -1 when C cannot key it. */
static int call_key(const struct fast_task *t, uint64_t dirfd, const char *path, long n, char *key)
{
    if (n <= 0)
        return -1; /* "" is ENOENT (or an fd's own object), a bad pointer EFAULT: Python says so */
    if (path[0] == '/') {
        memcpy(key, path, n);
        return n;
    }
    if ((int)dirfd != AT_FDCWD || t->cwdlen + 1 + n > KEY_MAX)
        return -1;
    memcpy(key, t->cwd, t->cwdlen);
    key[t->cwdlen] = '/';
    memcpy(key + t->cwdlen + 1, path, n);
    return t->cwdlen + 1 + n;
}

/* The cached path the call names, or NULL. */
static struct fast_path *call_path(const struct fast_task *t, uint64_t dirfd, const char *path, long n,
                                   int follow, char *key)
{
    int keylen = call_key(t, dirfd, path, n, key);
    return keylen < 0 ? NULL : path_find(key, keylen, follow);
}

/* Is the path keyed so known absent, and still absent on the host? */
static int known_absent(const char *key, int keylen, int follow)
{
    if (keylen < 0)
        return 0;
    const struct fast_absent *e = &fast_absents[fast_hash(key, keylen, follow) & (FAST_ABSENT_SLOTS - 1)];
    if (e->gen != fast_gen || e->keylen != keylen || e->follow != follow || memcmp(e->key, key, keylen))
        return 0;
    for (int i = 0; i < e->places; i++) {
        struct stat st;
        if (syscall(SYS_newfstatat, AT_FDCWD, e->at[i].dir, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            st.st_dev != e->at[i].dev || st.st_ino != e->at[i].ino)
            return 0;
        int r = syscall(SYS_newfstatat, AT_FDCWD, e->at[i].path, &st, AT_SYMLINK_NOFOLLOW);
        if (i == 0 && e->wino) /* the whiteout hides whatever the lower layer holds */
            return r == 0 && st.st_dev == e->wdev && st.st_ino == e->wino;
        if (r == 0 || errno != ENOENT)
            return 0;
    }
    return 1;
}

/* The path the call names: a cached one (*p), or an absent one (returns 1). */
static int call_lookup(const struct fast_task *t, uint64_t dirfd, const char *path, long n, int follow, char *key,
                       struct fast_path **p)
{
    int keylen = call_key(t, dirfd, path, n, key);
    *p = keylen < 0 ? NULL : path_find(key, keylen, follow);
    return *p == NULL && known_absent(key, keylen, follow);
}

static int answer_enoent(int notify_fd, const struct seccomp_notif *req)
{
    sysemu_respond(notify_fd, req->id, 0, -ENOENT, 0);
    return 1;
}

static unsigned int guest_id(unsigned int id, const unsigned int own[2])
{
    return id == own[0] || id == own[1] || id - own_first < own_count || id == own_legacy ? 0 : id;
}

static int answer_stat(int notify_fd, const struct seccomp_notif *req, struct stat *st, long long uid,
                       long long gid, uint64_t buf)
{
    st->st_uid = uid >= 0 ? (unsigned int)uid : guest_id(st->st_uid, own_uid);
    st->st_gid = gid >= 0 ? (unsigned int)gid : guest_id(st->st_gid, own_gid);
    if (sysemu_write(req->pid, buf, st, sizeof *st) < 0)
        return 0;
    sysemu_respond(notify_fd, req->id, 0, 0, 0);
    return 1;
}

static int fast_stat(int notify_fd, const struct seccomp_notif *req, const struct fast_path *p, uint64_t buf)
{
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, p->host, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return 0;
    if (st.st_dev != p->dev || st.st_ino != p->ino)
        return 0;
    return answer_stat(notify_fd, req, &st, p->uid, p->gid, buf);
}

/* fstat, and newfstatat(fd, "", AT_EMPTY_PATH): the descriptor's object, if known. */
static int fast_stat_fd(int notify_fd, const struct seccomp_notif *req, uint64_t fd, uint64_t buf)
{
    if ((int)fd < 0)
        return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/%u/fd/%d", req->pid, (int)fd);
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, link, &st, 0) < 0)
        return 0;
    const struct fast_object *o = object_slot(st.st_dev, st.st_ino);
    if (o->gen != fast_gen || o->dev != st.st_dev || o->ino != st.st_ino || o->uid == -2)
        return 0;
    return answer_stat(notify_fd, req, &st, o->uid, o->gid, buf);
}

/* readlink of a cached name (never a /proc magic link: those are not cached). */
static int fast_readlink(int notify_fd, const struct seccomp_notif *req, const struct fast_path *p, uint64_t buf,
                         int size)
{
    struct stat st;
    if (size <= 0 || syscall(SYS_newfstatat, AT_FDCWD, p->host, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
        st.st_dev != p->dev || st.st_ino != p->ino)
        return 0;
    if (!S_ISLNK(st.st_mode)) {
        sysemu_respond(notify_fd, req->id, 0, -EINVAL, 0);
        return 1;
    }
    char target[4096];
    ssize_t n = readlink(p->host, target, sizeof target);
    if (n < 0)
        return 0;
    if (n > size)
        n = size;
    if (sysemu_write(req->pid, buf, target, n) < 0)
        return 0;
    sysemu_respond(notify_fd, req->id, n, 0, 0);
    return 1;
}

static int fast_getcwd(int notify_fd, const struct seccomp_notif *req, const struct fast_task *t, uint64_t buf,
                       uint64_t size)
{
    const char *cwd = t->cwdlen ? t->cwd : "/";
    uint64_t len = (t->cwdlen ? t->cwdlen : 1) + 1; /* with its NUL */
    if (size < len) {
        sysemu_respond(notify_fd, req->id, 0, -ERANGE, 0);
        return 1;
    }
    if (sysemu_write(req->pid, buf, cwd, len) < 0)
        return 0;
    sysemu_respond(notify_fd, req->id, len, 0, 0);
    return 1;
}

static int fast_open(int notify_fd, const struct seccomp_notif *req, const struct fast_path *p, int flags)
{
    if (!p->reg)
        return 0;
    /* O_NONBLOCK: a FIFO put in the file's place from outside must not block the loop. */
    int fd = openat(AT_FDCWD, p->host, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != p->dev || st.st_ino != p->ino || !S_ISREG(st.st_mode) ||
        (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags & (O_APPEND | O_DIRECT | O_NOATIME)) < 0)) {
        close(fd);
        return 0;
    }
    int r = sysemu_addfd(notify_fd, req->id, fd, flags & O_CLOEXEC, 1, req->pid);
    close(fd);
    if (r < 0 && r != -ENOENT && r != -ESRCH) /* EMFILE and the like: the guest's answer */
        sysemu_respond(notify_fd, req->id, 0, r, 0);
    return 1;
}

/* access() of a cached name by a task whose ids are all root's: W_OK is
 * Python's (a read-only mount, a running program); X_OK needs an x bit. */
static int fast_access(int notify_fd, const struct seccomp_notif *req, const struct fast_path *p, int mode)
{
    struct stat st;
    if (mode & W_OK || syscall(SYS_newfstatat, AT_FDCWD, p->host, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
        st.st_dev != p->dev || st.st_ino != p->ino)
        return 0;
    int denied = mode & X_OK && !S_ISDIR(st.st_mode) && !(st.st_mode & 0111);
    sysemu_respond(notify_fd, req->id, 0, denied ? -EACCES : 0, 0);
    return 1;
}

#define AT_FLAGS_KNOWN (AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT)
#define OPEN_WRITES (O_ACCMODE | O_CREAT | O_TRUNC | O_PATH | __O_TMPFILE)
#define ACCESS_FLAGS_KNOWN (AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)

/* 1: answered here; 0: Python's. */
static int fast_answer(int notify_fd, const struct seccomp_notif *req)
{
    if (!fast_enabled || req->data.arch != AUDIT_ARCH_X86_64)
        return 0;
    const __u64 *a = req->data.args;
    struct fast_task *t = task_slot(req->pid, 0);
    if (t == NULL)
        return 0;
    int nr = req->data.nr;
    if (nr == SYS_getpid || nr == SYS_gettid) {
        sysemu_respond(notify_fd, req->id, nr == SYS_getpid ? t->vtgid : t->vtid, 0, 0);
        fast_answered++;
        return 1;
    }
    if (t->gen != fast_gen)
        return 0;
    static char key[KEY_MAX], path[4096];
    struct fast_path *p;
    long n;
    int done = 0, flags;
    switch (nr) {
    case SYS_stat:
    case SYS_lstat:
        n = sysemu_read_string(req->pid, a[0], path, sizeof path);
        if (call_lookup(t, AT_FDCWD, path, n, nr == SYS_stat, key, &p))
            done = answer_enoent(notify_fd, req);
        else if (p)
            done = fast_stat(notify_fd, req, p, a[1]);
        break;
    case SYS_fstat:
        done = fast_stat_fd(notify_fd, req, a[0], a[1]);
        break;
    case SYS_newfstatat:
        flags = (int)a[3];
        n = sysemu_read_string(req->pid, a[1], path, sizeof path);
        if (n == 0 && flags == AT_EMPTY_PATH)
            done = fast_stat_fd(notify_fd, req, a[0], a[2]);
        else if (flags & ~AT_FLAGS_KNOWN)
            break;
        else if (call_lookup(t, a[0], path, n, !(flags & AT_SYMLINK_NOFOLLOW), key, &p))
            done = answer_enoent(notify_fd, req);
        else if (p)
            done = fast_stat(notify_fd, req, p, a[2]);
        break;
    case SYS_open:
    case SYS_openat:
        /* An absent name is ENOENT whatever the flags, unless the open may create it. */
        flags = (int)a[nr == SYS_open ? 1 : 2];
        if (flags & (O_CREAT | __O_TMPFILE))
            break;
        n = sysemu_read_string(req->pid, a[nr == SYS_open ? 0 : 1], path, sizeof path);
        if (call_lookup(t, nr == SYS_open ? (uint64_t)AT_FDCWD : a[0], path, n, !(flags & O_NOFOLLOW), key, &p))
            done = answer_enoent(notify_fd, req);
        else if (p && !(flags & OPEN_WRITES))
            done = fast_open(notify_fd, req, p, flags);
        break;
    case SYS_readlink:
    case SYS_readlinkat: {
        int at = nr == SYS_readlinkat;
        if ((int)a[at + 2] <= 0)
            break; /* EINVAL before any lookup: Python's */
        n = sysemu_read_string(req->pid, a[at], path, sizeof path);
        if (call_lookup(t, at ? a[0] : (uint64_t)AT_FDCWD, path, n, 0, key, &p))
            done = answer_enoent(notify_fd, req);
        else if (p)
            done = fast_readlink(notify_fd, req, p, a[at + 1], (int)a[at + 2]);
        break;
    }
    case SYS_access:
    case SYS_faccessat:
    case SYS_faccessat2: {
        int at = nr != SYS_access;
        int mode = (int)a[at + 1];
        flags = nr == SYS_faccessat2 ? (int)a[3] : 0;
        if (mode & ~(R_OK | W_OK | X_OK) || flags & ~ACCESS_FLAGS_KNOWN)
            break; /* EINVAL before any lookup: Python's */
        n = sysemu_read_string(req->pid, a[at], path, sizeof path);
        if (call_lookup(t, at ? a[0] : (uint64_t)AT_FDCWD, path, n, !(flags & AT_SYMLINK_NOFOLLOW), key, &p))
            done = answer_enoent(notify_fd, req);
        else if (p && t->real_root)
            done = fast_access(notify_fd, req, p, mode);
        break;
    }
    case SYS_statfs:
        n = sysemu_read_string(req->pid, a[0], path, sizeof path);
        if (call_lookup(t, AT_FDCWD, path, n, 1, key, &p))
            done = answer_enoent(notify_fd, req);
        break;
    case SYS_getcwd:
        done = fast_getcwd(notify_fd, req, t, a[0], a[1]);
        break;
    }
    fast_answered += done;
    return done;
}
