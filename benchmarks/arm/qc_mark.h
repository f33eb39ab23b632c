/* The marker the insn_count plugin snapshots its counts at (marksys=64: a write(-1, 0, 0) that
 * fails with EBADF, x3 = "qcMARK" in ASCII, x4 = the label). Shared by the aarch64 drivers here. */
#ifndef QC_MARK_H
#define QC_MARK_H

static void mark(unsigned long label)
{
    register long x0 __asm__("x0") = -1;
    register long x1 __asm__("x1") = 0;
    register long x2 __asm__("x2") = 0;
    register unsigned long x3 __asm__("x3") = 0x71634d41524bul;
    register unsigned long x4 __asm__("x4") = label;
    register long x8 __asm__("x8") = 64;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x8) : "memory");
}

#endif
