/*
 * ort_run.c: run an ONNX model RUNS times with onnxruntime's C API (the linux-arm64
 * libonnxruntime.so.1 of the npm package onnxruntime-node), one thread, sequential, all graph
 * optimizations, with insn_count.c's marker syscall around every inference:
 *
 *     write(-1, 0, 0) with x3 = 0x71634d41524b ("qcMARK"), x4 = 2r+1 before run r, 2r+2 after it
 *
 * (and 100 / 101 around CreateEnv, 102 after CreateSession).
 *
 * Usage: ort_run LIB.so MODEL.onnx RUNS [-O OPTIMIZED.onnx] [-G LEVEL] [-T THREADS]
 *            -i NAME TYPE DIMS FILE ...   (TYPE: the ONNX element type number, DIMS: 1x128 or "-" for a scalar)
 *            -o NAME TYPE NELEMS FILE ... (the outputs of the last run, raw; type and size are checked)
 *
 * No onnxruntime header is shipped with the library, so the OrtApi slots used are declared by
 * their index in struct OrtApi (include/onnxruntime/core/session/onnxruntime_c_api.h; the
 * struct only ever grows at its end). Each is checked where it can be: CreateStatus /
 * GetErrorCode / GetErrorMessage on a made status and on a forced error (a missing model),
 * the output's element type, rank and count against what the caller expects, and by the caller
 * (benchmarks/arm/ort_arm.py): -O writes the optimized model (SetOptimizedModelFilePath with
 * level 99 fuses), the outputs equal onnxruntime on the host, and no thread is started.
 *
 * -G: the graph optimization level (default 99, ORT_ENABLE_ALL), -T: intra-op threads (default 1).
 *
 * Exit codes: 0 ok, 2 usage, 3 a file, 4 an onnxruntime error, 5 a slot check failed.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void OrtStatus; /* every Ort* object is opaque here */
typedef OrtStatus *(*status_fn)();

enum {
    S_CreateStatus = 0, S_GetErrorCode = 1, S_GetErrorMessage = 2, S_CreateEnv = 3, S_CreateSession = 7,
    S_Run = 9, S_CreateSessionOptions = 10, S_SetOptimizedModelFilePath = 11, S_SetSessionExecutionMode = 13,
    S_SetSessionGraphOptimizationLevel = 23, S_SetIntraOpNumThreads = 24, S_SetInterOpNumThreads = 25,
    S_CreateTensorWithDataAsOrtValue = 49, S_GetTensorMutableData = 51, S_GetTensorElementType = 60,
    S_GetDimensionsCount = 61, S_GetTensorShapeElementCount = 64, S_GetTensorTypeAndShape = 65,
    S_CreateCpuMemoryInfo = 69, S_ReleaseStatus = 93, S_ReleaseValue = 96, S_ReleaseTensorTypeAndShapeInfo = 99,
};
enum { ORT_INVALID_ARGUMENT = 2, ORT_SEQUENTIAL = 0, ORT_ENABLE_ALL = 99, ORT_LOGGING_LEVEL_ERROR = 3 };

typedef struct { const void *(*GetApi)(uint32_t version); const char *(*GetVersionString)(void); } OrtApiBase;

static void *const *api; /* const OrtApi *, as an array of function pointers */
#define FN(slot, type) ((type)api[slot])

#include "qc_mark.h"

static void check(OrtStatus *st, const char *what)
{
    if (st == NULL) return;
    fprintf(stderr, "ort_run: %s: error %d: %s\n", what,
            FN(S_GetErrorCode, int (*)(const OrtStatus *))(st),
            FN(S_GetErrorMessage, const char *(*)(const OrtStatus *))(st));
    exit(4);
}

static void *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) { fprintf(stderr, "ort_run: cannot open %s\n", path); exit(3); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(n > 0 ? (size_t)n : 1);
    if (p == NULL || fread(p, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "ort_run: cannot read %s\n", path); exit(3); }
    fclose(f);
    *size = (size_t)n;
    return p;
}

static size_t elem_size(int type)
{
    switch (type) {
    case 1: case 6: case 12: return 4;  /* float, int32, uint32 */
    case 2: case 3: case 9: return 1;   /* uint8, int8, bool */
    case 4: case 5: case 10: case 16: return 2;
    case 7: case 11: case 13: return 8; /* int64, double, uint64 */
    default: fprintf(stderr, "ort_run: element type %d not supported\n", type); exit(2);
    }
}

#define MAXIO 16

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s LIB.so MODEL.onnx RUNS [-O OPT.onnx] -i NAME TYPE DIMS FILE ... -o NAME TYPE NELEMS FILE ...\n", argv[0]);
        return 2;
    }
    const char *in_names[MAXIO], *out_names[MAXIO], *out_files[MAXIO], *opt_path = NULL;
    int in_types[MAXIO], out_types[MAXIO], in_rank[MAXIO];
    int64_t in_dims[MAXIO][8];
    size_t out_elems[MAXIO];
    void *in_data[MAXIO];
    size_t in_bytes[MAXIO];
    int nin = 0, nout = 0, level = ORT_ENABLE_ALL, threads = 1;
    long runs = atol(argv[3]);
    for (int a = 4; a < argc;) {
        if (strcmp(argv[a], "-O") == 0 && a + 1 < argc) {
            opt_path = argv[a + 1];
            a += 2;
        } else if (strcmp(argv[a], "-G") == 0 && a + 1 < argc) {
            level = atoi(argv[a + 1]);
            a += 2;
        } else if (strcmp(argv[a], "-T") == 0 && a + 1 < argc) {
            threads = atoi(argv[a + 1]);
            a += 2;
        } else if (strcmp(argv[a], "-i") == 0 && a + 4 < argc && nin < MAXIO) {
            in_names[nin] = argv[a + 1];
            in_types[nin] = atoi(argv[a + 2]);
            in_rank[nin] = 0;
            size_t n = 1;
            if (strcmp(argv[a + 3], "-") != 0)
                for (char *p = argv[a + 3]; *p && in_rank[nin] < 8; p += (*p == 'x')) {
                    in_dims[nin][in_rank[nin]] = strtoll(p, &p, 10);
                    n *= (size_t)in_dims[nin][in_rank[nin]++];
                }
            in_data[nin] = read_all(argv[a + 4], &in_bytes[nin]);
            if (in_bytes[nin] != n * elem_size(in_types[nin])) {
                fprintf(stderr, "ort_run: %s has %zu bytes, expected %zu\n", argv[a + 4], in_bytes[nin],
                        n * elem_size(in_types[nin]));
                return 3;
            }
            nin++;
            a += 5;
        } else if (strcmp(argv[a], "-o") == 0 && a + 4 < argc && nout < MAXIO) {
            out_names[nout] = argv[a + 1];
            out_types[nout] = atoi(argv[a + 2]);
            out_elems[nout] = (size_t)strtoull(argv[a + 3], NULL, 10);
            out_files[nout] = argv[a + 4];
            nout++;
            a += 5;
        } else {
            fprintf(stderr, "ort_run: bad argument %s\n", argv[a]);
            return 2;
        }
    }
    if (runs < 1 || nout < 1) { fprintf(stderr, "ort_run: need RUNS >= 1 and an -o\n"); return 2; }

    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) { fprintf(stderr, "ort_run: %s\n", dlerror()); return 3; }
    const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(lib, "OrtGetApiBase");
    if (get_base == NULL) { fprintf(stderr, "ort_run: no OrtGetApiBase in %s\n", argv[1]); return 3; }
    const OrtApiBase *base = get_base();
    /* API version 13 (onnxruntime 1.13) has every slot used here; 1.30 serves older versions */
    api = (void *const *)base->GetApi(13);
    if (api == NULL) { fprintf(stderr, "ort_run: GetApi(13) failed\n"); return 5; }
    fprintf(stderr, "ort_run: onnxruntime %s\n", base->GetVersionString());

    /* slots 0-2 and 93: a made status round-trips */
    OrtStatus *probe = FN(S_CreateStatus, OrtStatus *(*)(int, const char *))(ORT_INVALID_ARGUMENT, "qc-probe");
    if (FN(S_GetErrorCode, int (*)(const OrtStatus *))(probe) != ORT_INVALID_ARGUMENT ||
        strcmp(FN(S_GetErrorMessage, const char *(*)(const OrtStatus *))(probe), "qc-probe") != 0) {
        fprintf(stderr, "ort_run: CreateStatus/GetErrorCode/GetErrorMessage slots do not match\n");
        return 5;
    }
    FN(S_ReleaseStatus, void (*)(OrtStatus *))(probe);

    void *env = NULL, *opts = NULL, *sess = NULL, *mem = NULL;
    mark(100);
    check(FN(S_CreateEnv, status_fn)(ORT_LOGGING_LEVEL_ERROR, "qc", &env), "CreateEnv");
    mark(101);
    check(FN(S_CreateSessionOptions, status_fn)(&opts), "CreateSessionOptions");
    check(FN(S_SetIntraOpNumThreads, status_fn)(opts, threads), "SetIntraOpNumThreads");
    check(FN(S_SetInterOpNumThreads, status_fn)(opts, 1), "SetInterOpNumThreads");
    check(FN(S_SetSessionExecutionMode, status_fn)(opts, ORT_SEQUENTIAL), "SetSessionExecutionMode");
    check(FN(S_SetSessionGraphOptimizationLevel, status_fn)(opts, level), "SetSessionGraphOptimizationLevel");
    if (opt_path) check(FN(S_SetOptimizedModelFilePath, status_fn)(opts, opt_path), "SetOptimizedModelFilePath");

    /* a forced error: slot 7 on a missing file must fail with a message naming it */
    OrtStatus *st = FN(S_CreateSession, status_fn)(env, "/nonexistent/qc-probe.onnx", opts, &sess);
    if (st == NULL || strstr(FN(S_GetErrorMessage, const char *(*)(const OrtStatus *))(st), "qc-probe") == NULL) {
        fprintf(stderr, "ort_run: CreateSession on a missing file did not fail as expected\n");
        return 5;
    }
    fprintf(stderr, "ort_run: forced error ok (code %d)\n", FN(S_GetErrorCode, int (*)(const OrtStatus *))(st));
    FN(S_ReleaseStatus, void (*)(OrtStatus *))(st);
    sess = NULL;

    check(FN(S_CreateSession, status_fn)(env, argv[2], opts, &sess), "CreateSession");
    mark(102);
    check(FN(S_CreateCpuMemoryInfo, status_fn)(0, 0, &mem), "CreateCpuMemoryInfo");
    void *inputs[MAXIO];
    for (int i = 0; i < nin; i++)
        check(FN(S_CreateTensorWithDataAsOrtValue, status_fn)(mem, in_data[i], in_bytes[i], in_dims[i],
                                                              (size_t)in_rank[i], in_types[i], &inputs[i]),
              "CreateTensorWithDataAsOrtValue");
    void *outputs[MAXIO];
    for (long r = 0; r < runs; r++) {
        memset(outputs, 0, sizeof outputs);
        mark((unsigned long)(2 * r + 1));
        OrtStatus *rs = FN(S_Run, status_fn)(sess, NULL, in_names, (const void *const *)inputs, (size_t)nin,
                                             out_names, (size_t)nout, outputs);
        mark((unsigned long)(2 * r + 2));
        check(rs, "Run");
        for (int o = 0; o < nout; o++) {
            if (r == runs - 1) {
                void *info = NULL, *data = NULL;
                int type = -1;
                size_t count = 0, rank = 0;
                check(FN(S_GetTensorTypeAndShape, status_fn)(outputs[o], &info), "GetTensorTypeAndShape");
                check(FN(S_GetTensorElementType, status_fn)(info, &type), "GetTensorElementType");
                check(FN(S_GetDimensionsCount, status_fn)(info, &rank), "GetDimensionsCount");
                check(FN(S_GetTensorShapeElementCount, status_fn)(info, &count), "GetTensorShapeElementCount");
                FN(S_ReleaseTensorTypeAndShapeInfo, void (*)(void *))(info);
                if (type != out_types[o] || count != out_elems[o] || rank < 1 || rank > 8) {
                    fprintf(stderr, "ort_run: output %s: type %d, %zu elements, rank %zu; expected type %d, %zu elements\n",
                            out_names[o], type, count, rank, out_types[o], out_elems[o]);
                    return 5;
                }
                check(FN(S_GetTensorMutableData, status_fn)(outputs[o], &data), "GetTensorMutableData");
                FILE *f = fopen(out_files[o], "wb");
                size_t bytes = count * elem_size(type);
                if (f == NULL || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
                    fprintf(stderr, "ort_run: cannot write %s\n", out_files[o]);
                    return 3;
                }
            }
            FN(S_ReleaseValue, void (*)(void *))(outputs[o]);
        }
    }
    fprintf(stderr, "ort_run: %ld runs ok\n", runs);
    return 0;
}
