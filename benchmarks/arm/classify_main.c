/* Host-side check of insn_count.c's decoder: reads hex opcodes (one a line) on stdin, prints
 * each one's class name. Build: gcc -O2 -DINSN_COUNT_CLASSIFY_ONLY classify_main.c */
#define INSN_COUNT_CLASSIFY_ONLY
#include "insn_count.c"

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        uint32_t op = (uint32_t)strtoul(line, NULL, 16);
        puts(CLASS_NAMES[classify(op)]);
    }
    return 0;
}
