/* BatchNorm's training-mode forward and backward for the conv's fused step (tree_fused.py),
 * one layer at a time, on the CPU: what a dozen small torch operators a layer do, in two or
 * three passes over the (R, H) rows. Loaded by native.py, which builds this file with the
 * system's C compiler; the torch operators stay as the fallback and the reference.
 *
 * Forward, row weights w (the real targets read from each row), n_mean = N, n_var = N - 1:
 *   mean = sum_r w_r h_r / N, var = sum_r w_r (h_r - mean)^2 / (N - 1)  (the lecture's unbiased variance)
 *   xhat = (h - mean) / sqrt(var + eps)  (in place of h), a = scale (beta + xhat gamma)
 * scale is 1 (the caller takes tanh(a)) or 2 (it takes 2 sigmoid(a) - 1); times 2 is exact.
 * Backward, from dx = d loss / d tanh(...) and y = tanh(...), in place of dx:
 *   da = dx (1 - y^2), dbeta = sum_r da, dgamma = sum_r da xhat,
 *   dh = gamma rstd (da - w (dbeta / N + xhat dgamma / (N - 1))).
 * Every loop runs over a row's H channels, contiguous, so a compiler vectorizes it without
 * reordering any sum. work: 3 H scratch values. */
#include <math.h>
#include <stdint.h>

#define BN_TANH(T, SUF, SQRT)                                                                     \
void bn_forward_##SUF(int64_t R, int64_t H, const T *w, double n_mean, double n_var, double eps, \
                      double scale, T *h, const T *gamma, const T *beta, T *a,                   \
                      T *mean, T *var, T *rstd) {                                                \
    for (int64_t j = 0; j < H; j++) { mean[j] = 0; var[j] = 0; }                                 \
    for (int64_t r = 0; r < R; r++) {                                                            \
        const T wr = w[r] / (T)n_mean; const T *row = h + r * H;                                 \
        for (int64_t j = 0; j < H; j++) mean[j] += row[j] * wr;                                  \
    }                                                                                            \
    for (int64_t r = 0; r < R; r++) {                                                            \
        const T wr = w[r] / (T)n_var; T *row = h + r * H;                                        \
        for (int64_t j = 0; j < H; j++) { T d = row[j] - mean[j]; row[j] = d; var[j] += d * d * wr; } \
    }                                                                                            \
    for (int64_t j = 0; j < H; j++) rstd[j] = (T)1 / SQRT(var[j] + (T)eps);                      \
    const T k = (T)scale;                                                                        \
    for (int64_t r = 0; r < R; r++) {                                                            \
        T *row = h + r * H, *out = a + r * H;                                                    \
        for (int64_t j = 0; j < H; j++) {                                                        \
            T x = row[j] * rstd[j]; row[j] = x; out[j] = k * beta[j] + x * (k * gamma[j]);       \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
void bn_backward_##SUF(int64_t R, int64_t H, const T *w, double n_mean, double n_var,           \
                       T *dx, const T *y, const T *xhat, const T *gamma, const T *rstd,          \
                       T *dgamma, T *dbeta, T *work) {                                           \
    T *s = work, *u = work + H, *v = work + 2 * H;                                               \
    for (int64_t j = 0; j < H; j++) { dgamma[j] = 0; dbeta[j] = 0; }                             \
    for (int64_t r = 0; r < R; r++) {                                                            \
        T *g = dx + r * H; const T *yr = y + r * H, *xr = xhat + r * H;                          \
        for (int64_t j = 0; j < H; j++) {                                                        \
            T da = g[j] * (1 - yr[j] * yr[j]); g[j] = da; dbeta[j] += da; dgamma[j] += da * xr[j]; \
        }                                                                                        \
    }                                                                                            \
    for (int64_t j = 0; j < H; j++) {                                                            \
        s[j] = gamma[j] * rstd[j]; u[j] = dbeta[j] / (T)n_mean; v[j] = dgamma[j] / (T)n_var;     \
    }                                                                                            \
    for (int64_t r = 0; r < R; r++) {                                                            \
        T *g = dx + r * H; const T *xr = xhat + r * H; const T wr = w[r];                        \
        for (int64_t j = 0; j < H; j++) g[j] = s[j] * (g[j] - wr * (u[j] + xr[j] * v[j]));      \
    }                                                                                            \
}

BN_TANH(float, f32, sqrtf)
BN_TANH(double, f64, sqrt)
