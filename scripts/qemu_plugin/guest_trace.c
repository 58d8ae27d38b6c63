/*
 * Two things insn_count.c cannot see, for `bench --profile` and the memory columns of emulated rows.
 *
 * 1. Op trace. Between lseek(-1, 0x51454D57, 0) and lseek(-1, 0x51454D58, 0) (the runner's profiled
 *    inferences, runner_common._profile), every clock_gettime the marking thread makes is a trace point:
 *    the host's CLOCK_REALTIME and CLOCK_MONOTONIC at that moment, and the guest instructions the thread
 *    has executed since the start marker. A runtime's profiler reads the clock at each op's start and end
 *    (QEMU 7.2 gives an aarch64 guest no vDSO, so each read is a real syscall the plugin sees), so the
 *    instructions of an op are the count between the points of its two reads (pipeline/op_profile.py).
 *    lseek(-1, 0x51454D59, 0) marks the start of a profiled inference (the Python runner marks only the
 *    last, the native runner each). Appended to out=PATH:
 *      p KIND CLOCKID REALTIME_NS MONOTONIC_NS COUNT OWN   KIND k: clock read, c: inference start
 *      e COUNT OWN                                         the stop marker
 *    OWN leaves out the profiler's own work: a runtime's profiler may do more than read the clock inside an
 *    op's span (onnxruntime 1.32 formats every node's input and output shapes and its allocator's figures
 *    there, ~26,000 aarch64 instructions a node). Its work is told apart by a measurement made
 *    in the same process: the runner's unprofiled timed inferences (insn_count.c's markers, lseek(-1,
 *    0x51454D55 / 0x51454D56, 0)) run before the profiled ones, and every block executed inside them is
 *    noted with the call site its function was called from (a shadow stack kept from the blocks' last
 *    instructions: BL/BLR calls, RET returns). A profiled block not noted so runs only because the
 *    profiler is on, and so does every instruction of a call made from it (the profiler's calls into
 *    malloc, std::string, the clock, until they return). The call site matters: onnxruntime frees a node's
 *    name and shape strings through the same out-of-line std::string destructor it uses unprofiled, but
 *    from KernelScope's destructor its freeing path runs only when profiling. The frame that marks
 *    (depth 0 from the marker: the runner's own loop, one for timing, another for profiling) is the
 *    harness: its blocks count, and its call sites are no context. OWN counts the rest: what the runtime
 *    also executes unprofiled, from the same call sites.
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
#define MAGIC_TIMED_START 0x51454D55u
#define MAGIC_TIMED_STOP 0x51454D56u
#define MAGIC_START 0x51454D57u
#define MAGIC_STOP 0x51454D58u
#define MAGIC_CALL 0x51454D59u

static const char *out_path;
static uint64_t base, size, peak_kb;
static int frozen; /* the profiled session (a second one, --profile) is not the row's memory */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread uint64_t count, own;
static __thread int counting;
static __thread FILE *trace;

/* The call sites of the open calls (a shadow stack, from the blocks' last instructions), and the depth of the
   open call the profiler's code made (0: none). */
#define STACK 4096
static __thread uint64_t stack[STACK];
static __thread int64_t sp, profiler_call;

enum { PLAIN, CALL, RETURN };

struct block {
    uint64_t lo, hi;
    uint32_t n;
    int ends;
};

/* The (caller's call site, block) pairs the marking thread executed inside timed sections, an open-addressing
   hash set. Only that thread notes and counts (an instruction count is of one thread), so it needs no lock. */
static uint64_t (*seen)[2];
static size_t seen_cap, seen_n;
static __thread int timed;

static size_t slot(uint64_t site, uint64_t lo, size_t cap)
{
    uint64_t h = (site * 0x9E3779B97F4A7C15u) ^ (lo * 0xC2B2AE3D27D4EB4Fu);
    size_t i = (h ^ (h >> 29)) & (cap - 1);
    while (seen[i][1] && (seen[i][0] != site || seen[i][1] != lo))
        i = (i + 1) & (cap - 1);
    return i;
}

static int was_seen(uint64_t site, uint64_t lo)
{
    return seen_cap && seen[slot(site, lo, seen_cap)][1] == lo;
}

static void note_seen(uint64_t site, uint64_t lo)
{
    if (was_seen(site, lo))
        return;
    if (2 * (seen_n + 1) > seen_cap) {
        size_t cap = seen_cap ? 2 * seen_cap : 1 << 20;
        uint64_t(*old)[2] = seen;
        size_t old_cap = seen_cap;
        seen = calloc(cap, sizeof *seen);
        seen_cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i][1]) {
                size_t j = slot(old[i][0], old[i][1], cap);
                seen[j][0] = old[i][0];
                seen[j][1] = old[i][1];
            }
        free(old);
    }
    size_t i = slot(site, lo, seen_cap);
    if (!seen[i][1]) {
        seen[i][0] = site;
        seen[i][1] = lo;
        seen_n++;
    }
}

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    struct block *b = udata;
    if (!timed && !counting)
        return;
    /* The marking frame (depth 0: the runner's loop, a different one for timing and for profiling) is the
       harness, not the profiler, and the call sites in it are no context of the functions they call. */
    uint64_t site = sp > 1 && sp <= STACK ? stack[sp - 1] : 0;
    int known = 1;
    if (timed)
        note_seen(site, b->lo);
    if (counting) {
        count += b->n;
        known = sp == 0 || was_seen(site, b->lo);
        if (!profiler_call && known)
            own += b->n;
    }
    if (b->ends == CALL) {
        if (sp >= 0 && sp < STACK)
            stack[sp] = b->hi;
        sp++;
        if (counting && !profiler_call && !known) /* the profiler's code calls: all of that call is its work */
            profiler_call = sp;
    } else if (b->ends == RETURN && sp > 0) {
        if (profiler_call == sp)
            profiler_call = 0;
        sp--;
    }
}

/* How a block's last instruction leaves it: a call (BL, BLR, BLRAA...), a return (RET, RETAA/AB), or else. */
static int ends(uint32_t insn)
{
    if ((insn & 0xFC000000u) == 0x94000000u || (insn & 0xFEFFF000u) == 0xD63F0000u)
        return CALL;
    if ((insn & 0xFFFFFC1Fu) == 0xD65F0000u || insn == 0xD65F0BFFu || insn == 0xD65F0FFFu)
        return RETURN;
    return PLAIN;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct qemu_plugin_insn *last = qemu_plugin_tb_get_insn(tb, n - 1);
    struct block *b = calloc(1, sizeof *b);
    uint32_t insn;
    memcpy(&insn, qemu_plugin_insn_data(last), sizeof insn);
    b->lo = qemu_plugin_tb_vaddr(tb);
    b->hi = qemu_plugin_insn_vaddr(last) + qemu_plugin_insn_size(last);
    b->n = n;
    b->ends = qemu_plugin_insn_size(last) == 4 ? ends(insn) : PLAIN;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static uint64_t ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void point(char kind, uint64_t clockid)
{
    fprintf(trace, "p %c %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", kind, clockid,
            ns(CLOCK_REALTIME), ns(CLOCK_MONOTONIC), count, own);
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
    if (a2 == MAGIC_TIMED_START) {
        sp = 0;
        timed = 1;
    } else if (a2 == MAGIC_TIMED_STOP) {
        timed = 0;
    } else if (a2 == MAGIC_START && !counting) {
        if (size) {
            guest_rss();
            frozen = 1;
        }
        trace = fopen(out_path, "a");
        if (!trace) {
            perror(out_path);
            return;
        }
        count = own = sp = profiler_call = 0;
        counting = 1;
    } else if (a2 == MAGIC_CALL && counting) {
        point('c', 0);
    } else if (a2 == MAGIC_STOP && counting) {
        counting = 0;
        fprintf(trace, "e %" PRIu64 " %" PRIu64 "\n", count, own);
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
