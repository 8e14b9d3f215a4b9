/* One precision's kernels; included by fib_diagonal.c with REAL, SFX, EXP and LOG defined. */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* d-vector helpers on GCC/Clang vector types (64 bytes: one AVX-512 register, two AVX2 ones) when d
 * is a multiple of the width; the auto-vectoriser otherwise vectorises across keys with gathers. */
typedef REAL FN(vec) __attribute__((vector_size(64)));
typedef REAL FN(half) __attribute__((vector_size(32)));
typedef REAL FN(quarter) __attribute__((vector_size(16)));
#define VW ((int64_t)(64 / sizeof(REAL)))

/* Sum of the lanes as a tree (halves, then quarters): a lane-by-lane sum is a long dependency chain. */
static inline REAL FN(hsum)(FN(vec) x) {
    FN(half) h0, h1;
    memcpy(&h0, &x, sizeof h0);
    memcpy(&h1, (char *)&x + sizeof h0, sizeof h1);
    h0 += h1;
    FN(quarter) q0, q1;
    memcpy(&q0, &h0, sizeof q0);
    memcpy(&q1, (char *)&h0 + sizeof q0, sizeof q1);
    q0 += q1;
    REAL acc = 0;
    for (int64_t l = 0; l < (int64_t)(sizeof q0 / sizeof(REAL)); l++) acc += q0[l];
    return acc;
}

static inline FN(vec) FN(load)(const REAL *p) {
    FN(vec) x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline REAL FN(dot)(const REAL *restrict a, const REAL *restrict b, const int64_t d) {
    REAL acc = 0;
    if (d % VW == 0) {
        FN(vec) sum = FN(load)(a) * FN(load)(b);
        for (int64_t i = VW; i < d; i += VW) sum += FN(load)(a + i) * FN(load)(b + i);
        return FN(hsum)(sum);
    }
    for (int64_t i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

static inline void FN(axpy)(REAL *restrict y, const REAL a, const REAL *restrict x, const int64_t d) {
    if (d % VW == 0) {
        for (int64_t i = 0; i < d; i += VW) {
            FN(vec) r = FN(load)(y + i) + a * FN(load)(x + i);
            memcpy(y + i, &r, sizeof r);
        }
        return;
    }
    for (int64_t i = 0; i < d; i++) y[i] += a * x[i];
}

/* Scores of row t against its keys (scaled), and their maximum (at least `floor`). */
static inline REAL FN(row_scores)(const REAL *restrict qt, const REAL *restrict k, const int64_t *keys,
                                  const int64_t cnt, const REAL scale, REAL floor, REAL *restrict s,
                                  const int64_t D) {
    for (int64_t j = 0; j < cnt; j++) s[j] = scale * FN(dot)(qt, k + keys[j] * D, D);
    for (int64_t j = 0; j < cnt; j++) floor = s[j] > floor ? s[j] : floor;
    return floor;
}

static inline __attribute__((always_inline)) void FN(forward_slab)(const Job *job, const int64_t item,
                                                                  Scratch *sc, const int64_t D) {
    const int64_t T = job->T, P = job->P;
    const REAL scale = (REAL)job->scale;
    const REAL *restrict q = (const REAL *)job->q + item * T * D;
    const REAL *restrict k = (const REAL *)job->k + item * T * D;
    const REAL *restrict v = (const REAL *)job->v + item * T * D;
    REAL *restrict out = (REAL *)job->res + item * T * D;
    REAL *restrict lse = (REAL *)job->lse + item * T;
    REAL *restrict s = (REAL *)sc->scores;
    REAL vsum[D], acc[D];
    if (job->multiplicative) {
        memset(vsum, 0, sizeof vsum);
        for (int64_t j = 0; j < T; j++) FN(axpy)(vsum, 1, v + j * D, D);
    }
    for (int64_t t = 0; t < T; t++) {
        const int64_t cnt = row_keys(job, item, t, sc->keys);
        const int masked = job->multiplicative && t >= P;
        const REAL m = FN(row_scores)(q + t * D, k, sc->keys, cnt, scale, masked ? 0 : -INFINITY, s, D);
        const REAL c = masked ? EXP(-m) : 0; /* weight of each masked key */
        REAL denom = c * (REAL)(T - cnt);
        for (int64_t j = 0; j < cnt; j++) {
            s[j] = EXP(s[j] - m);
            denom += s[j];
        }
        if (masked) {
            memcpy(acc, vsum, sizeof acc);
            for (int64_t i = 0; i < D; i++) acc[i] *= c;
        } else {
            memset(acc, 0, sizeof acc);
        }
        for (int64_t j = 0; j < cnt; j++) FN(axpy)(acc, s[j] - c, v + sc->keys[j] * D, D);
        const REAL inv = 1 / denom;
        REAL *restrict ot = out + t * D;
        for (int64_t i = 0; i < D; i++) ot[i] = acc[i] * inv;
        lse[t] = m + LOG(denom);
    }
}

static inline __attribute__((always_inline)) void FN(backward_slab)(const Job *job, const int64_t item,
                                                                   Scratch *sc, const int64_t D) {
    const int64_t T = job->T, P = job->P, base = item * T * D;
    const REAL scale = (REAL)job->scale;
    const REAL *restrict q = (const REAL *)job->q + base, *restrict k = (const REAL *)job->k + base;
    const REAL *restrict v = (const REAL *)job->v + base, *restrict out = (const REAL *)job->out + base;
    const REAL *restrict dout = (const REAL *)job->dout + base;
    const REAL *restrict lse = (const REAL *)job->lse + item * T;
    REAL *restrict dq = (REAL *)job->dq + base, *restrict dk = (REAL *)job->dk + base;
    REAL *restrict dv = (REAL *)job->dv + base;
    REAL *restrict p = (REAL *)sc->scores, *restrict g = (REAL *)sc->grads;
    REAL gsum[D], acc[D];
    memset(dk, 0, T * D * sizeof(REAL));
    memset(dv, 0, T * D * sizeof(REAL));
    memset(gsum, 0, sizeof gsum);
    for (int64_t t = 0; t < T; t++) {
        const REAL *restrict qt = q + t * D, *restrict dot = dout + t * D;
        const int64_t cnt = row_keys(job, item, t, sc->keys);
        const int64_t *keys = sc->keys;
        const REAL delta = FN(dot)(dot, out + t * D, D);
        /* probability of each masked key: it gets c * dO through V and nothing through Q and K */
        const REAL c = (job->multiplicative && t >= P) ? EXP(-lse[t]) : 0;
        if (c != 0) FN(axpy)(gsum, c, dot, D);
        FN(row_scores)(qt, k, keys, cnt, scale, 0, p, D);
        for (int64_t j = 0; j < cnt; j++) p[j] = EXP(p[j] - lse[t]);
        for (int64_t j = 0; j < cnt; j++) g[j] = p[j] * (FN(dot)(dot, v + keys[j] * D, D) - delta) * scale;
        memset(acc, 0, sizeof acc);
        for (int64_t j = 0; j < cnt; j++) FN(axpy)(acc, g[j], k + keys[j] * D, D);
        memcpy(dq + t * D, acc, sizeof acc);
        for (int64_t j = 0; j < cnt; j++) {
            FN(axpy)(dk + keys[j] * D, g[j], qt, D);
            FN(axpy)(dv + keys[j] * D, p[j] - c, dot, D);
        }
    }
    if (job->multiplicative)
        for (int64_t j = 0; j < T; j++) FN(axpy)(dv + j * D, 1, gsum, D);
}

static void *FN(forward_worker)(void *arg) {
    Job *job = (Job *)arg;
    Scratch sc;
    if (scratch_alloc(&sc, job->T + job->max_slots + job->R, sizeof(REAL)) != 0) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (int64_t it; (it = take_item(job)) < job->B * job->H;)
        DISPATCH_HEAD_DIM(job->D, FN(forward_slab)(job, it, &sc, HEAD_DIM));
    scratch_free(&sc);
    return NULL;
}

static void *FN(backward_worker)(void *arg) {
    Job *job = (Job *)arg;
    Scratch sc;
    if (scratch_alloc(&sc, job->T + job->max_slots + job->R, sizeof(REAL)) != 0) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (int64_t it; (it = take_item(job)) < job->B * job->H;)
        DISPATCH_HEAD_DIM(job->D, FN(backward_slab)(job, it, &sc, HEAD_DIM));
    scratch_free(&sc);
    return NULL;
}

#undef VW
#undef FN
#undef CAT
#undef CAT_
