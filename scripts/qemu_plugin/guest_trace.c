/*
 * Two things insn_count.c cannot see, for `bench --profile` and the memory columns of emulated rows.
 *
 * 1. Op trace. Between lseek(-1, 0x51454D57, 0) and lseek(-1, 0x51454D58, 0) (the runner's profiled
 *    inferences, runner_common._profile), every clock_gettime the marking thread makes is a trace point:
 *    the host's CLOCK_REALTIME and CLOCK_MONOTONIC at that moment, and the guest instructions the thread
 *    has executed since the start marker. A runtime's profiler reads the clock at each op's start and end
 *    (QEMU 7.2 gives an aarch64 guest no vDSO, so each read is a real syscall the plugin sees), so the
 *    instructions of an op are the count between the points of its two reads (pipeline/op_profile.py).
 *    lseek(-1, 0x51454D59, 0) marks the start of each profiled inference. Appended to out=PATH:
 *      p KIND CLOCKID REALTIME_NS MONOTONIC_NS COUNT     KIND k: clock read, c: inference start
 *      e COUNT                                           the stop marker
 *
 * 2. The guest's peak resident memory. qemu's own figure (its VmHWM) adds its translated code and its
 *    own heap; the guest's memory is what qemu mapped inside the guest address space, which starts at
 *    base= (qemu -B) and is size= bytes long (qemu -R). Resident memory only falls when the guest unmaps
 *    or gives back pages, so its peak is the largest of: the resident bytes of that range (host
 *    /proc/self/smaps) just before each munmap, mremap, madvise or brk, and at exit, or at the first
 *    profile start marker, after which the runner loads a second, profiled session. Appended:
 *      rss_peak_kb N
 *
 * Built by pipeline/devices/emulator.py beside insn_count.so, with the same command.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define NR_BRK 214
#define NR_MUNMAP 215
#define NR_MREMAP 216
#define NR_MADVISE 233
#define NR_CLOCK_GETTIME 113
#define NR_LSEEK 62
#define MAGIC_START 0x51454D57u
#define MAGIC_STOP 0x51454D58u
#define MAGIC_CALL 0x51454D59u

static const char *out_path;
static uint64_t base, size, peak_kb;
static int frozen; /* the profiled session (a second one, --profile) is not the row's memory */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread uint64_t count;
static __thread int counting;
static __thread FILE *trace;

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    if (counting)
        count += (uintptr_t)udata;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)n);
}

static uint64_t ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void point(char kind, uint64_t clockid)
{
    fprintf(trace, "p %c %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", kind, clockid, ns(CLOCK_REALTIME),
            ns(CLOCK_MONOTONIC), count);
}

static void guest_rss(void)
{
    if (frozen)
        return;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return;
    char line[512];
    int inside = 0;
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi, v;
        if (sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = lo >= base && hi <= base + size;
        else if (inside && sscanf(line, "Rss: %llu kB", &v) == 1)
            kb += v;
    }
    fclose(f);
    pthread_mutex_lock(&lock);
    if (kb > peak_kb)
        peak_kb = kb;
    pthread_mutex_unlock(&lock);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (size && (num == NR_MUNMAP || num == NR_MREMAP || num == NR_MADVISE || num == NR_BRK))
        guest_rss();
    if (num == NR_CLOCK_GETTIME && counting) {
        point('k', a1);
        return;
    }
    if (num != NR_LSEEK || (int64_t)a1 != -1)
        return;
    if (a2 == MAGIC_START && !counting) {
        if (size) {
            guest_rss();
            frozen = 1;
        }
        trace = fopen(out_path, "a");
        if (!trace) {
            perror(out_path);
            return;
        }
        count = 0;
        counting = 1;
    } else if (a2 == MAGIC_CALL && counting) {
        point('c', 0);
    } else if (a2 == MAGIC_STOP && counting) {
        counting = 0;
        fprintf(trace, "e %" PRIu64 "\n", count);
        fclose(trace);
        trace = NULL;
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    if (!size)
        return;
    guest_rss();
    FILE *f = fopen(out_path, "a");
    if (f) {
        fprintf(f, "rss_peak_kb %" PRIu64 "\n", peak_kb);
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            out_path = argv[i] + 4;
        else if (strncmp(argv[i], "base=", 5) == 0)
            base = strtoull(argv[i] + 5, NULL, 0);
        else if (strncmp(argv[i], "size=", 5) == 0)
            size = strtoull(argv[i] + 5, NULL, 0);
    }
    if (!out_path) {
        fprintf(stderr, "guest_trace: missing out=PATH argument\n");
        return 1;
    }
    FILE *f = fopen(out_path, "w");
    if (!f) {
        perror(out_path);
        return 1;
    }
    fclose(f);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
