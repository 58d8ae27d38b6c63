/*
 * Counts the guest instructions one guest thread executes between two marker
 * syscalls, so an emulated benchmark reports a repeatable cost instead of the
 * meaningless emulated wall time.
 *
 * Protocol (the guest side is os.lseek(-1, MAGIC, 0), which fails with EBADF):
 *   lseek(-1, 0x51454D55, 0)  start: zero this thread's counter, start counting
 *   lseek(-1, 0x51454D56, 0)  stop: append the count as one line to out=PATH
 * The out file is truncated when the plugin loads, so it holds one qemu run.
 *
 * Counting is per translation block at block entry. That is exact here because
 * an aarch64 svc always ends its block, and user-mode code does not leave a
 * block half-way except by a fault, which a benchmark does not take. (Checked:
 * it matched a per-instruction inline counter exactly on a Python loop.)
 * State is thread-local: in user mode every guest thread is one host thread,
 * so the counts need no locks and other threads never leak in.
 *
 * Built by pipeline/devices/emulator.py (`python -m pipeline device setup`) into EMU_HOME/plugin/ with
 *   gcc -O2 -shared -fPIC -Wall -I DIR -o insn_count.so insn_count.c
 * where DIR holds qemu-plugin.h taken from Debian's qemu source package of the
 * installed qemu-user (fetched with a private apt config; the host's is untouched).
 * Run: qemu-aarch64 -plugin insn_count.so,out=COUNTS ...  (not qemu-aarch64-static,
 * which cannot load plugins).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define AARCH64_NR_LSEEK 62
#define MAGIC_START 0x51454D55u
#define MAGIC_STOP 0x51454D56u

static const char *out_path;
static __thread uint64_t count;
static __thread int counting;

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    if (counting)
        count += (uintptr_t)udata;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)n);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index,
                       int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                       uint64_t a8)
{
    if (num != AARCH64_NR_LSEEK || (int64_t)a1 != -1)
        return;
    if (a2 == MAGIC_START) {
        count = 0;
        counting = 1;
    } else if (a2 == MAGIC_STOP && counting) {
        counting = 0;
        FILE *f = fopen(out_path, "a");
        if (!f) {
            perror(out_path);
            return;
        }
        fprintf(f, "%llu\n", (unsigned long long)count);
        fclose(f);
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
        fprintf(stderr, "insn_count: missing out=PATH argument\n");
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
