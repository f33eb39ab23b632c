/* A known instruction mix between two insn_count markers (label 1 and 2), for checking the
 * plugin: with N iterations the loop executes 10*N SDOT, 3*N FMLA (vector), N FMADD (scalar),
 * N LD1, and 2*N + 10 other instructions (SUBS, B.NE, the MOV before the loop and the 9 of
 * the closing marker, its SVC included). With "mmla" as second argument (run under
 * -cpu max) a second block between markers 3 and 4 runs N times SMMLA, UMMLA, USMMLA, USDOT
 * (.inst encodings, so the file builds for armv8.2-a+dotprod). With "marks" as second argument
 * it issues N marks labelled 5 in a row instead, 9 instructions apart (for a plugin check
 * with many marks: qc's -DQC_PROFILE builds mark before every kernel call).
 * With "thread" a second thread spins (loads and adds) from before mark 1 until after mark 2:
 * with insn_count's percpu=1 the marks still see exactly the main thread's mix above.
 * Usage: marker_test N [mmla|marks|thread] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARK(label)                                                                    \
    "mov x8, #64\n\tmov x0, #-1\n\tmov x1, xzr\n\tmov x2, #0\n\t"                       \
    "movz x3, #0x524b\n\tmovk x3, #0x4d41, lsl #16\n\tmovk x3, #0x7163, lsl #32\n\t"   \
    "mov x4, #" #label "\n\tsvc #0\n\t"

static volatile int g_stop, g_started;
static volatile unsigned long g_spins;

static void *spin(void *p)
{
    (void)p;
    g_started = 1;
    while (!g_stop) g_spins++;
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t th;
    int threaded = argc > 2 && strcmp(argv[2], "thread") == 0;
    if (threaded) {
        if (pthread_create(&th, NULL, spin, NULL) != 0) return 3;
        while (!g_started) {}
        for (unsigned long want = g_spins + 100000; g_spins < want;) {} /* it runs */
    }
    long n = argc > 1 ? atol(argv[1]) : 100;
    if (n < 1) return 2;
    static unsigned char buf[16] __attribute__((aligned(16)));
    unsigned char *p = buf;
    float out[4];
    __asm__ volatile(
        MARK(1)
        "mov x9, %[n]\n"
        "1:\n\t"
        "sdot v0.4s, v1.16b, v2.16b\n\tsdot v0.4s, v1.16b, v2.16b\n\t"
        "sdot v0.4s, v1.16b, v2.16b\n\tsdot v0.4s, v1.16b, v2.16b\n\t"
        "sdot v0.4s, v1.16b, v2.16b\n\tudot v0.4s, v1.16b, v2.16b\n\t"
        "udot v0.4s, v1.16b, v2.16b\n\tsdot v0.2s, v1.8b, v2.8b\n\t"
        "sdot v0.4s, v1.16b, v2.4b[1]\n\tudot v0.4s, v1.16b, v2.4b[3]\n\t"
        "fmla v3.4s, v4.4s, v5.4s\n\tfmla v3.4s, v4.4s, v5.s[2]\n\tfmls v3.2d, v4.2d, v5.2d\n\t"
        "fmadd s7, s8, s9, s7\n\t"
        "ld1 {v6.16b}, [%[p]]\n\t"
        "subs x9, x9, #1\n\t"
        "b.ne 1b\n\t"
        MARK(2)
        "str q3, [%[o]]\n\t"
        : : [n] "r"(n), [p] "r"(p), [o] "r"(out)
        : "x0", "x1", "x2", "x3", "x4", "x8", "x9", "v0", "v1", "v2", "v3", "v4", "v5", "v6",
          "v7", "v8", "v9", "memory", "cc");
    if (threaded) {
        unsigned long seen = g_spins;
        g_stop = 1;
        pthread_join(th, NULL);
        printf("spins %lu\n", seen);
    }
    if (argc > 2 && strcmp(argv[2], "mmla") == 0) {
        __asm__ volatile(
            MARK(3)
            "mov x9, %[n]\n"
            "1:\n\t"
            ".inst 0x4e82a420\n\t" /* smmla v0.4s, v1.16b, v2.16b */
            ".inst 0x6e82a420\n\t" /* ummla */
            ".inst 0x4e82ac20\n\t" /* usmmla */
            ".inst 0x4e829c20\n\t" /* usdot v0.4s, v1.16b, v2.16b */
            "subs x9, x9, #1\n\t"
            "b.ne 1b\n\t"
            MARK(4)
            : : [n] "r"(n)
            : "x0", "x1", "x2", "x3", "x4", "x8", "x9", "v0", "v1", "v2", "memory", "cc");
    }
    if (argc > 2 && strcmp(argv[2], "marks") == 0) {
        for (long i = 0; i < n; i++)
            __asm__ volatile(MARK(5) : : : "x0", "x1", "x2", "x3", "x4", "x8", "memory");
    }
    printf("done %g\n", (double)out[0]);
    return 0;
}
