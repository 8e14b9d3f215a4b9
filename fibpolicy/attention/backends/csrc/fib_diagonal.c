/* Fibottention on the CPU: one pass over each (batch, head) slab, forward and backward.
 *
 * Tensors are contiguous (B, H, T, D) with T = P prefix tokens + N patches. Patch query n of head h
 * attends to the P prefix keys and to the patch keys n + o for the head's signed offsets o (each
 * offset once, both signs, 0 at most once). Prefix queries attend to every key. The other fixed
 * patterns (fibpolicy.attention.patterns) may add a per-slot column mask on a W-wide grid, per-query
 * anchors (key = anchor + o) and per-query extra keys (BigBird's random keys); all keys of a row are
 * distinct, so the multiplicative count T - |allowed| stays right.
 *
 * Multiplicative mode (the release's softmax(S * M)): masked keys have logit 0, so with
 * m = max(0, max allowed s) and c = exp(-m) a patch row is
 *     out = [sum_allowed (e^(s-m) - c) v + c * sum_all v] / [sum_allowed e^(s-m) + c * (T - |allowed|)]
 * and needs nothing of size T x T.
 *
 * Work items are (batch, head) slabs: a slab's q, k, v and gradients stay in cache, and the backward
 * scatter into dk/dv never crosses slabs, so threads need no atomics. Threads are plain pthreads
 * started per call: no second OpenMP runtime beside PyTorch's, no threads spinning after the call.
 * The forward pass keeps only the per-row log-sum-exp; the backward pass recomputes the few scores.
 * The per-precision code is in fib_diagonal_body.h, included once for float and once for double.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const void *q, *k, *v, *out, *dout;
    void *res, *lse, *dq, *dk, *dv;
    const int32_t *offsets; /* (H, max_slots) signed offsets */
    const int32_t *counts;  /* (H) slots used per head */
    const int32_t *col_shifts; /* (H, max_slots) column shift per slot, or NULL (no column mask) */
    const int32_t *anchors;    /* (H, N) anchor of each patch query, or NULL (the query itself) */
    const int32_t *extra;      /* (B, H, N, R) extra patch keys per query (random keys), -1 = none; or NULL */
    int64_t B, H, T, P, D, max_slots;
    int64_t W, R; /* grid width for the column mask (0: none); extra keys per query */
    double scale;
    int multiplicative;
    int64_t next_item; /* shared work counter */
    int failed;
} Job;

typedef struct {
    int64_t *keys; /* keys of the current row */
    void *scores;  /* per key: scores, then weights or probabilities */
    void *grads;   /* per key: score gradients */
} Scratch;

static int scratch_alloc(Scratch *sc, int64_t tokens, size_t real_size) {
    /* tokens counts every key a row can have: prefix + slots + extra keys (callers pass that bound) */
    sc->keys = malloc((tokens + 1) * sizeof(int64_t));
    sc->scores = malloc((tokens + 1) * real_size);
    sc->grads = malloc((tokens + 1) * real_size);
    return (sc->keys && sc->scores && sc->grads) ? 0 : -1;
}

static void scratch_free(Scratch *sc) {
    free(sc->keys);
    free(sc->scores);
    free(sc->grads);
}

static int64_t take_item(Job *job) { return __atomic_fetch_add(&job->next_item, 1, __ATOMIC_RELAXED); }

/* Keys of row t of (batch, head) slab `item`: every key for a prefix row; for a patch row the prefix
 * keys, then the in-range slots (key = anchor + offset, anchor = the query unless anchors are given,
 * and with a column mask only when anchor column + shift stays in [0, W)), then the extra keys.
 * Returns their count. */
static inline int64_t row_keys(const Job *job, int64_t item, int64_t t, int64_t *keys) {
    const int64_t P = job->P, N = job->T - job->P, h = item % job->H;
    int64_t cnt = 0;
    if (t < P) {
        for (int64_t j = 0; j < job->T; j++) keys[cnt++] = j;
        return cnt;
    }
    for (int64_t j = 0; j < P; j++) keys[cnt++] = j;
    const int32_t *offs = job->offsets + h * job->max_slots;
    const int64_t n = t - P;
    const int64_t base = job->anchors ? job->anchors[h * N + n] : n;
    if (job->W > 0) {
        const int32_t *shifts = job->col_shifts + h * job->max_slots;
        const int64_t col = base % job->W;
        for (int32_t s = 0; s < job->counts[h]; s++) {
            const int64_t key = base + offs[s], c = col + shifts[s];
            if (key >= 0 && key < N && c >= 0 && c < job->W) keys[cnt++] = P + key;
        }
    } else {
        for (int32_t s = 0; s < job->counts[h]; s++) {
            const int64_t key = base + offs[s];
            if (key >= 0 && key < N) keys[cnt++] = P + key;
        }
    }
    if (job->extra) {
        const int32_t *e = job->extra + (item * N + n) * job->R;
        for (int64_t r = 0; r < job->R; r++)
            if (e[r] >= 0) keys[cnt++] = P + e[r];
    }
    return cnt;
}

/* Common head dims as compile-time constants: the d-loops then become a few full-width vector
 * operations on registers instead of generic loops with alignment and alias checks. */
#define DISPATCH_HEAD_DIM(d, call)                                                                  \
    switch (d) {                                                                                    \
    case 16: { const int64_t HEAD_DIM = 16; call; break; }                                          \
    case 32: { const int64_t HEAD_DIM = 32; call; break; }                                          \
    case 64: { const int64_t HEAD_DIM = 64; call; break; }                                          \
    case 128: { const int64_t HEAD_DIM = 128; call; break; }                                        \
    default: { const int64_t HEAD_DIM = (d); call; break; }                                         \
    }

#define REAL float
#define SFX f32
#define EXP expf
#define LOG logf
#include "fib_diagonal_body.h"
#undef REAL
#undef SFX
#undef EXP
#undef LOG

#define REAL double
#define SFX f64
#define EXP exp
#define LOG log
#include "fib_diagonal_body.h"

/* Runs worker on num_threads threads (the caller's included). Returns 0, or -1 if memory ran out. */
static int run_threads(void *(*worker)(void *), Job *job, int num_threads) {
    const int64_t items = job->B * job->H;
    if (num_threads > items) num_threads = (int)items;
    if (num_threads > 256) num_threads = 256;
    pthread_t threads[256];
    int started = 0;
    for (int i = 1; i < num_threads; i++) {
        if (pthread_create(&threads[started], NULL, worker, job) != 0) break; /* fewer threads, same result */
        started++;
    }
    worker(job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    return job->failed ? -1 : 0;
}

int fib_forward(int is_double, const void *q, const void *k, const void *v, void *out, void *lse,
                const int32_t *offsets, const int32_t *counts, int64_t max_slots, int64_t B, int64_t H,
                int64_t T, int64_t P, int64_t D, double scale, int multiplicative, int num_threads,
                const int32_t *col_shifts, int64_t W, const int32_t *anchors, const int32_t *extra, int64_t R) {
    Job job = {q, k, v, NULL, NULL, out, lse, NULL, NULL, NULL, offsets, counts, col_shifts, anchors, extra,
               B, H, T, P, D, max_slots, W, R, scale, multiplicative, 0, 0};
    return run_threads(is_double ? forward_worker_f64 : forward_worker_f32, &job, num_threads);
}

int fib_backward(int is_double, const void *q, const void *k, const void *v, const void *out,
                 const void *dout, const void *lse, void *dq, void *dk, void *dv, const int32_t *offsets,
                 const int32_t *counts, int64_t max_slots, int64_t B, int64_t H, int64_t T, int64_t P,
                 int64_t D, double scale, int multiplicative, int num_threads,
                 const int32_t *col_shifts, int64_t W, const int32_t *anchors, const int32_t *extra, int64_t R) {
    Job job = {q, k, v, out, dout, NULL, (void *)lse, dq, dk, dv, offsets, counts, col_shifts, anchors, extra,
               B, H, T, P, D, max_slots, W, R, scale, multiplicative, 0, 0};
    return run_threads(is_double ? backward_worker_f64 : backward_worker_f32, &job, num_threads);
}
