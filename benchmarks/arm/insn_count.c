/*
 * insn_count.c: a qemu TCG plugin (plugin API version 1, qemu 7.2) that counts the guest
 * instructions an aarch64 program executes under qemu-user, in total and by class, and
 * snapshots the counts whenever the guest issues the marker syscall
 *
 *     write(-1, any, 0) with x3 = INSN_COUNT_MAGIC and x4 = a label (an integer)
 *
 * (it fails with EBADF, so it is harmless on real hardware too).
 *
 * Classes are decoded from each instruction's 32-bit opcode at translation time; each
 * translation block gets its per-class counts precomputed and one inline 64-bit add per
 * non-empty class (plus one for the total) runs whenever the block executes. There are no
 * callbacks on the hot path. Inline counters are global in API v1 (no per-vCPU
 * scoreboards): the counts are exact for a single guest thread and may lose updates with
 * several threads running at once.
 *
 * A block is counted when it starts, so a block left by a fault in its middle counts in
 * full; a syscall ends its block, so the count at a marker includes its SVC.
 *
 * Build: gcc -O2 -shared -fPIC -o insn_count.so insn_count.c
 * Run:   qemu-aarch64 -cpu cortex-a76 -plugin ./insn_count.so,out=counts.json prog args
 * With percpu=1 the counts are kept per guest thread (a callback per block execution instead of
 * the inline adds) and each mark snapshots its own thread's: exact with several threads running.
 * Without out=FILE the JSON goes to qemu's log (stderr). With marksys=N every syscall
 * number N is a mark as well (label N): e.g. 113, clock_gettime, which qemu 7.2 runs as a
 * real syscall (no vDSO for aarch64 guests), brackets the timed loop of qc's C harness.
 * Compiled with -DINSN_COUNT_CLASSIFY_ONLY only classify() remains (for host-side tests).
 *
 * There is no qemu-plugin.h in Debian, so the handful of API v1 declarations it uses are
 * written out below (they match include/qemu/qemu-plugin.h of qemu 7.2).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- qemu plugin API v1 (subset) ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only ever passed by pointer here */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2,
                                              uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* ---- classes ---- */
#define INSN_COUNT_MAGIC 0x71634d41524bULL /* "qcMARK" */
#define SYS_WRITE_AARCH64 64

enum { C_DOT, C_MMLA, C_FMLA_VEC, C_FMADD_SCALAR, C_LDST, C_SIMD_OTHER, C_OTHER, NCLS };
static const char *const CLASS_NAMES[NCLS] = {
    "dot", "mmla", "fmla_vec", "fmadd_scalar", "ldst", "simd_fp_other", "other",
};

static int classify(uint32_t op)
{
    /* SDOT/UDOT (vector), USDOT (vector) */
    if ((op & 0x9FE0FC00u) == 0x0E809400u || (op & 0xBFE0FC00u) == 0x0E809C00u) return C_DOT;
    /* SDOT/UDOT (by element), SUDOT/USDOT (by element) */
    if ((op & 0x9FC0F400u) == 0x0F80E000u || (op & 0xBF40F400u) == 0x0F00F000u) return C_DOT;
    /* SMMLA/UMMLA/USMMLA, BFMMLA */
    if ((op & 0xDFE0F400u) == 0x4E80A400u || (op & 0xFFE0FC00u) == 0x6E40EC00u) return C_MMLA;
    /* FMLA/FMLS (vector) single/double, half; by element single/double, half */
    if ((op & 0xBF20FC00u) == 0x0E20CC00u || (op & 0xBF60FC00u) == 0x0E400C00u ||
        (op & 0xBF80B400u) == 0x0F801000u || (op & 0xBFC0B400u) == 0x0F001000u)
        return C_FMLA_VEC;
    /* FMADD/FMSUB/FNMADD/FNMSUB (scalar, floating-point data-processing 3 source) */
    if ((op & 0xFF000000u) == 0x1F000000u) return C_FMADD_SCALAR;
    /* top-level group op0 (bits 28-25) = x1x0: loads and stores (incl. SIMD&FP) */
    if ((op & 0x0A000000u) == 0x08000000u) return C_LDST;
    /* SVE (op0 = 0010) with bit 31 set: SVE memory (contiguous, gather, store) */
    if ((op & 0x9E000000u) == 0x84000000u) return C_LDST;
    /* op0 = x111: scalar FP and Advanced SIMD; op0 = 0010: SVE */
    if ((op & 0x0E000000u) == 0x0E000000u || (op & 0x1E000000u) == 0x04000000u) return C_SIMD_OTHER;
    return C_OTHER;
}

#ifndef INSN_COUNT_CLASSIFY_ONLY
/* ---- counters ---- */
static uint64_t g_total;
static uint64_t g_counts[NCLS];

#define MAX_MARKS 100000
struct mark { uint64_t label, vcpu, total, counts[NCLS]; };
static struct mark *g_marks;
static size_t g_nmarks;
static uint64_t g_lost_marks;
static char *g_out_path;
static int64_t g_mark_sysno = -1; /* marksys=N: every syscall N is a mark too (label N) */

/* percpu=1: a callback per block execution adds its counts to the executing vCPU's (= guest
 * thread's, in qemu-user) own counters, and a mark snapshots the counters of the thread that
 * issued it: exact per thread, slower than the inline adds. */
#define MAX_VCPUS 1024
struct tb_counts { uint64_t n, per[NCLS]; };
struct vcpu_counts { uint64_t total, counts[NCLS]; uint64_t pad[8 - (NCLS + 1) % 8]; };
static int g_percpu;
static struct vcpu_counts *g_vcpu;
static unsigned int g_nvcpus;
static uint64_t g_lost_vcpu;

static void tb_exec_percpu(unsigned int vcpu, void *udata)
{
    const struct tb_counts *t = udata;
    if (vcpu >= MAX_VCPUS) { __atomic_fetch_add(&g_lost_vcpu, t->n, __ATOMIC_RELAXED); return; }
    struct vcpu_counts *v = &g_vcpu[vcpu];
    v->total += t->n;
    for (int c = 0; c < NCLS; c++) v->counts[c] += t->per[c];
    if (vcpu >= g_nvcpus) __atomic_store_n(&g_nvcpus, vcpu + 1, __ATOMIC_RELAXED);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t per[NCLS] = {0};
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t op = 0;
        if (qemu_plugin_insn_size(insn) == 4) {
            memcpy(&op, qemu_plugin_insn_data(insn), 4); /* A64 is little-endian, so is the host */
            per[classify(op)]++;
        } else {
            per[C_OTHER]++;
        }
    }
    if (g_percpu) {
        struct tb_counts *t = malloc(sizeof *t); /* lives as long as the translation (never freed) */
        if (!t) abort();
        t->n = n;
        memcpy(t->per, per, sizeof per);
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec_percpu, QEMU_PLUGIN_CB_NO_REGS, t);
        return;
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_total, n);
    for (int c = 0; c < NCLS; c++)
        if (per[c])
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_counts[c], per[c]);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id; (void)a2; (void)a6; (void)a7; (void)a8;
    uint64_t label;
    if (num == SYS_WRITE_AARCH64 && a1 == UINT64_MAX && a3 == 0 && a4 == INSN_COUNT_MAGIC)
        label = a5;
    else if (num == g_mark_sysno)
        label = (uint64_t)num;
    else
        return;
    if (g_nmarks >= MAX_MARKS) { g_lost_marks++; return; }
    struct mark *m = &g_marks[g_nmarks++];
    m->label = label;
    m->vcpu = vcpu;
    if (g_percpu && vcpu < MAX_VCPUS) {
        m->total = g_vcpu[vcpu].total;
        memcpy(m->counts, g_vcpu[vcpu].counts, sizeof m->counts);
    } else {
        m->total = g_total;
        memcpy(m->counts, g_counts, sizeof g_counts);
    }
}

static void put_counts(FILE *f, uint64_t total, const uint64_t *counts)
{
    fprintf(f, "{\"total\": %" PRIu64 ", \"classes\": {", total);
    for (int c = 0; c < NCLS; c++)
        fprintf(f, "%s\"%s\": %" PRIu64, c ? ", " : "", CLASS_NAMES[c], counts[c]);
    fprintf(f, "}}");
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id; (void)p;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return;
    if (g_percpu) { /* the whole program: every thread's */
        for (unsigned int v = 0; v < g_nvcpus; v++) {
            g_total += g_vcpu[v].total;
            for (int c = 0; c < NCLS; c++) g_counts[c] += g_vcpu[v].counts[c];
        }
    }
    fprintf(f, "{\"plugin\": \"insn_count\", \"percpu\": %d, \"exit\": ", g_percpu);
    put_counts(f, g_total, g_counts);
    fprintf(f, ", \"lost_marks\": %" PRIu64 ", \"lost_vcpu_insns\": %" PRIu64 ", \"vcpus\": [", g_lost_marks,
            g_lost_vcpu);
    for (unsigned int v = 0; g_percpu && v < g_nvcpus; v++) {
        fprintf(f, "%s", v ? ", " : "");
        put_counts(f, g_vcpu[v].total, g_vcpu[v].counts);
    }
    fprintf(f, "], \"marks\": [");
    for (size_t i = 0; i < g_nmarks; i++) {
        fprintf(f, "%s\n  {\"label\": %" PRIu64 ", \"vcpu\": %" PRIu64 ", \"at\": ", i ? "," : "",
                g_marks[i].label, g_marks[i].vcpu);
        put_counts(f, g_marks[i].total, g_marks[i].counts);
        fprintf(f, "}");
    }
    fprintf(f, "]}\n");
    fclose(f);
    if (g_out_path) {
        FILE *o = fopen(g_out_path, "w");
        if (o) { fputs(buf, o); fclose(o); }
        else { qemu_plugin_outs("insn_count: cannot write out= file\n"); qemu_plugin_outs(buf); }
    } else {
        qemu_plugin_outs(buf);
    }
    free(buf);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            g_out_path = strdup(argv[i] + 4);
        } else if (strncmp(argv[i], "marksys=", 8) == 0) {
            g_mark_sysno = strtoll(argv[i] + 8, NULL, 10);
        } else if (strncmp(argv[i], "percpu=", 7) == 0) {
            g_percpu = atoi(argv[i] + 7) != 0;
        } else {
            fprintf(stderr, "insn_count: unknown option %s (known: out=FILE, marksys=N, percpu=0|1)\n", argv[i]);
            return -1;
        }
    }
    g_marks = calloc(MAX_MARKS, sizeof *g_marks);
    if (!g_marks) return -1;
    if (g_percpu && !(g_vcpu = calloc(MAX_VCPUS, sizeof *g_vcpu))) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
#endif /* INSN_COUNT_CLASSIFY_ONLY */
