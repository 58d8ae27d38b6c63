/*
 * Per-block profile of the timed section: which guest translation blocks one
 * guest thread executed between the marker syscalls, how often, and their
 * instruction bytes, so a cost model can price each hot block with the board
 * core's scheduling model (llvm-mca) instead of counting every instruction as
 * equal (pipeline/estimate.py).
 *
 * Same markers as insn_count.c (lseek(-1, 0x51454D55 / 0x51454D56, 0)). At each
 * stop it appends to out=PATH:
 *   section INSTRUCTIONS
 *   VADDR COUNT HEXBYTES        one line per block executed in the section
 * and zeroes the blocks' counts. Counting per block at entry is exact for the
 * same reason as in insn_count.c. Blocks are kept in one list under a mutex
 * (translation may happen on any thread); the counts are only ever touched by
 * the marking thread.
 *
 * Built by targets/emu.py beside insn_count.so, with the same command.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define AARCH64_NR_LSEEK 62
#define MAGIC_START 0x51454D55u
#define MAGIC_STOP 0x51454D56u

struct block {
    uint64_t vaddr;
    uint64_t count;
    size_t n_insns;
    size_t size;
    uint8_t bytes[];
};

static const char *out_path;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct block **blocks;
static size_t n_blocks, cap_blocks;
static __thread int counting;

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    if (counting)
        ((struct block *)udata)->count++;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb), size = 0;
    for (size_t i = 0; i < n; i++)
        size += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
    struct block *b = calloc(1, sizeof(*b) + size);
    if (!b)
        abort();
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = n;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t s = qemu_plugin_insn_size(insn);
        memcpy(b->bytes + b->size, qemu_plugin_insn_data(insn), s);
        b->size += s;
    }
    pthread_mutex_lock(&lock);
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 4096;
        blocks = realloc(blocks, cap_blocks * sizeof(*blocks));
        if (!blocks)
            abort();
    }
    blocks[n_blocks++] = b;
    pthread_mutex_unlock(&lock);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void dump(void)
{
    FILE *f = fopen(out_path, "a");
    if (!f) {
        perror(out_path);
        return;
    }
    pthread_mutex_lock(&lock);
    uint64_t total = 0;
    for (size_t i = 0; i < n_blocks; i++)
        total += blocks[i]->count * blocks[i]->n_insns;
    fprintf(f, "section %llu\n", (unsigned long long)total);
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        if (!b->count)
            continue;
        fprintf(f, "%llx %llu ", (unsigned long long)b->vaddr, (unsigned long long)b->count);
        for (size_t j = 0; j < b->size; j++)
            fprintf(f, "%02x", b->bytes[j]);
        fputc('\n', f);
        b->count = 0;
    }
    pthread_mutex_unlock(&lock);
    fclose(f);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index,
                       int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                       uint64_t a8)
{
    if (num != AARCH64_NR_LSEEK || (int64_t)a1 != -1)
        return;
    if (a2 == MAGIC_START) {
        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < n_blocks; i++)
            blocks[i]->count = 0;
        pthread_mutex_unlock(&lock);
        counting = 1;
    } else if (a2 == MAGIC_STOP && counting) {
        counting = 0;
        dump();
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            out_path = argv[i] + 4;
    if (!out_path) {
        fprintf(stderr, "bb_profile: missing out=PATH argument\n");
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
    return 0;
}
