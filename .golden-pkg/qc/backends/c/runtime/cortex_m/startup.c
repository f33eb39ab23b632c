/* Bare-metal startup for qemu-system-arm mps2-an386 (Cortex-M4) and mps3-an547 (Cortex-M55)
   with newlib + semihosting (rdimon). Own reset handler and stack (rdimon's crt0 asks the host
   for memory and gets addresses outside the board's RAM), argv from SYS_GET_CMDLINE, and fault
   handlers that exit with 0xF0 | fault number so a crash never hangs the runner. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern uint32_t __stack_top, __data_load, __data_start, __data_end, __bss_start, __bss_end;
extern int main(int argc, char **argv);
extern void initialise_monitor_handles(void);
void Reset_Handler(void);
void qc_fault_handler(void);

#define QC_MAX_ARGS 64
static char qc_cmdline[4096];
static char *qc_argv[QC_MAX_ARGS + 1];

static int qc_semihost(int op, void *arg)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int qc_parse_cmdline(void)
{
    struct { char *buf; int len; } block = { qc_cmdline, (int)sizeof qc_cmdline - 1 };
    int argc = 0;
    char *p = qc_cmdline;
    if (qc_semihost(0x15 /* SYS_GET_CMDLINE */, &block) != 0) {
        fputs("qc startup: no command line (longer than 4095 bytes?)\n", stderr);
        exit(0xEE);
    }
    qc_cmdline[block.len] = '\0';
    while (*p) {
        while (*p == ' ') {
            *p++ = '\0';
        }
        if (!*p) {
            break;
        }
        if (argc == QC_MAX_ARGS) {
            fputs("qc startup: more than 64 arguments\n", stderr);
            exit(0xEE);
        }
        qc_argv[argc++] = p;
        while (*p && *p != ' ') {
            ++p;
        }
    }
    qc_argv[argc] = NULL;
    return argc;
}

void qc_fault_handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    _Exit((int)(0xF0u | (ipsr & 0x0Fu)));
}

void Reset_Handler(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    int argc;
    /* CPACR: full access to CP10/CP11 (FPU and MVE) before any FP instruction. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; ++dst) {
        *dst = 0;
    }
    initialise_monitor_handles();
    argc = qc_parse_cmdline();
    exit(main(argc, qc_argv));
}

typedef void (*qc_vector)(void);
__attribute__((section(".vectors"), used)) const qc_vector qc_vectors[16] = {
    (qc_vector)(uintptr_t)&__stack_top, Reset_Handler,
    qc_fault_handler, qc_fault_handler, qc_fault_handler, qc_fault_handler, qc_fault_handler,
    0, 0, 0, 0,
    qc_fault_handler, qc_fault_handler, 0, qc_fault_handler, qc_fault_handler,
};
