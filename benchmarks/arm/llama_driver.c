/* llama_driver.c: llama.cpp's prefill and token-by-token decode between insn_count markers
 * (benchmarks/llama_cpp.py builds it against the vendored llama.cpp, static, for aarch64).
 *
 *     llama_driver MODEL.gguf N_DECODE TOKEN_ID...
 *
 * Loads MODEL (CPU only; weights repacked at load as llama.cpp does), makes a context of
 * n_ctx = len(prompt) + N_DECODE (llama.cpp pads it to a multiple of 256) with one thread for
 * both single tokens and batches, the default KV cache (F16) and flash-attention setting, then:
 *
 *     mark 1; llama_decode(the prompt as one batch; logits of its last token only); argmax; mark 2
 *     for i in 0..N_DECODE-1: llama_decode(the previous token); argmax; mark 3+i
 *
 * Greedy sampling is an argmax over the vocabulary's logits (counted with each step). The
 * prompt is given as token ids (no tokenizer run here, no BOS added). After the last mark it
 * prints (stdout, one "key value..." a line): the model's and the context's figures, the
 * generated ids (N_DECODE + 1: the one from the prefill, then one per step).
 *
 * Marker: write(-1, p, 0) with x3 = 0x71634d41524b ("qcMARK") and x4 = the label; it fails
 * with EBADF, so it is harmless outside the plugin (see insn_count.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#include "qc_mark.h"

static llama_token argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return (llama_token)best;
}

static void fail(const char *what)
{
    fprintf(stderr, "llama_driver: %s\n", what);
    exit(3);
}

static void print_model(const struct llama_model *model, const struct llama_context *ctx,
                        const struct llama_context_params *cp)
{
    int n_layer = llama_model_n_layer(model), n_head = llama_model_n_head(model);
    int n_head_kv = llama_model_n_head_kv(model), n_embd = llama_model_n_embd(model);
    char desc[256];
    llama_model_desc(model, desc, sizeof desc);
    printf("desc %s\n", desc);
    printf("model_size %llu\n", (unsigned long long)llama_model_size(model));
    printf("n_params %llu\n", (unsigned long long)llama_model_n_params(model));
    printf("n_layer %d\nn_head %d\nn_head_kv %d\nn_embd %d\n", n_layer, n_head, n_head_kv, n_embd);
    printf("n_ctx %u\n", llama_n_ctx(ctx));
    printf("type_k %d\ntype_v %d\n", (int)cp->type_k, (int)cp->type_v);
    printf("flash_attn_type %d\n", (int)cp->flash_attn_type);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_DECODE TOKEN_ID...\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int n_decode = atoi(argv[2]);
    int n_prompt = argc - 3;
    if (n_decode < 0) fail("N_DECODE < 0");
    llama_token *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    llama_token *out = malloc((size_t)(n_decode + 1) * sizeof *out);
    if (!prompt || !out) fail("out of memory");
    for (int i = 0; i < n_prompt; i++) prompt[i] = (llama_token)atoi(argv[3 + i]);

    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) fail("cannot load the model");
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_decode);
    if (cp.n_batch < (uint32_t)n_prompt) cp.n_batch = cp.n_ubatch = (uint32_t)n_prompt; /* one ubatch */
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) fail("cannot create the context");
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    mark(1);
    if (llama_decode(ctx, llama_batch_get_one(prompt, n_prompt)) != 0) fail("prefill failed");
    out[0] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    mark(2);
    for (int i = 0; i < n_decode; i++) {
        if (llama_decode(ctx, llama_batch_get_one(&out[i], 1)) != 0) fail("decode failed");
        out[i + 1] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
        mark(3 + (unsigned long)i);
    }

    print_model(model, ctx, &cp);
    printf("n_prompt %d\nn_decode %d\n", n_prompt, n_decode);
    printf("state_seq_size %zu\n", llama_state_seq_get_size(ctx, 0));
    printf("ids");
    for (int i = 0; i <= n_decode; i++) printf(" %d", (int)out[i]);
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(prompt);
    free(out);
    return 0;
}
