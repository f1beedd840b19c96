/* LeNet (conv 5x5 -> 2x2 max-pool -> ReLU, twice; three dense layers) for N nets on shared
 * images, on the CPU. Two entry points: lenet_features, the conv blocks' output for
 * evaluation's test pass (its dense layers run as batched matrix multiplies in PyTorch), and
 * lenet_step, one whole GD-step gradient (forward, softmax cross-entropy, backward) and, given a
 * direction u, Pearlmutter's R-operator passes: R{gradient} = H u (the Hessian-vector product)
 * R{input gradient} and R{logits}, which the back-gradient reverse pass needs. The loss is the
 * cross-entropy with soft targets (class probabilities; hard labels come one-hot).
 *
 * Layout: images go LANES at a time into the lanes of one vector ("image-last":
 * [C][H][W][LANES]), so every multiply-add is a broadcast weight times LANES images and no two
 * lanes ever mix. Inputs are padded to 32x32 by the caller. Compiled at first use by
 * datadistill.kernels (cc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8 /* images per vector */
typedef float vec __attribute__((vector_size(4 * LANES)));
typedef int32_t veci __attribute__((vector_size(4 * LANES)));
#define K 5
#define TAPS (K * K)
#define MAX_CIN 4 /* input channels; the caller falls back to PyTorch beyond */
#define MAX_CLASSES 128 /* the caller falls back to PyTorch beyond */
enum { SIDE = 32, C1 = 6, A1 = 28, S1 = 14, C2 = 16, A2 = 10, S2 = 5, FEATURES = C2 * S2 * S2,
       H1 = 120, H2 = 84 };

static inline vec vselect(veci mask, vec a, vec b) { return (vec)((mask & (veci)a) | (~mask & (veci)b)); }
static inline veci iselect(veci mask, veci a, veci b) { return (mask & a) | (~mask & b); }
static inline float hsum(vec v) {
    float s = 0;
    for (int l = 0; l < LANES; ++l) s += v[l];
    return s;
}

/* Fused conv 5x5 (valid) -> 2x2 max-pool -> + bias -> ReLU. in: [cin][h][w]; weight:
 * [cout][cin][5][5]; out: [cout][(h-4)/2][(w-4)/2]. idx (optional) gets the winning position
 * of each window, 0..3 in row-major order, the first of equal maxima (as PyTorch's kernel). */
static void conv_pool_relu(const vec *in, int cin, int h, int w, const float *weight,
                           const float *bias, int cout, vec *out, veci *idx) {
    const int ph = (h - K + 1) / 2, pw = (w - K + 1) / 2;
    for (int o0 = 0; o0 < cout; o0 += 2) {
        for (int py = 0; py < ph; ++py) {
            for (int px = 0; px < pw; ++px) {
                vec acc[2][4] = {{{0}}};
                for (int c = 0; c < cin; ++c) {
                    const vec *plane = in + (int64_t)c * h * w;
                    for (int ky = 0; ky < K; ++ky) {
                        const vec *row0 = plane + (2 * py + ky) * w + 2 * px, *row1 = row0 + w;
                        for (int kx = 0; kx < K; ++kx) {
                            const vec i00 = row0[kx], i01 = row0[kx + 1];
                            const vec i10 = row1[kx], i11 = row1[kx + 1];
                            for (int o = 0; o < 2; ++o) {
                                const float wt = weight[((o0 + o) * cin + c) * TAPS + ky * K + kx];
                                acc[o][0] += wt * i00;
                                acc[o][1] += wt * i01;
                                acc[o][2] += wt * i10;
                                acc[o][3] += wt * i11;
                            }
                        }
                    }
                }
                for (int o = 0; o < 2; ++o) {
                    vec m = acc[o][0];
                    veci arg = {0};
                    for (int q = 1; q < 4; ++q) {
                        const veci better = acc[o][q] > m;
                        m = vselect(better, acc[o][q], m);
                        arg = iselect(better, (veci){0} + q, arg);
                    }
                    const int64_t at = ((int64_t)(o0 + o) * ph + py) * pw + px;
                    m += bias[o0 + o];
                    out[at] = vselect(m > (vec){0}, m, (vec){0});
                    if (idx) idx[at] = arg;
                }
            }
        }
    }
}

/* out[o][y][x] += sum over c, ky, kx of weight[o][c][ky][kx] * in[c][y+ky][x+kx]
 * (valid 5x5 convolution, no bias); out is [cout][h-4][w-4]. Output rows are taken XB
 * columns at a time, two output channels at a time (an odd last one alone, 8 columns at a
 * time), so the accumulators stay in registers. */
#define CONV_ROWS(OB, XB)                                                                      \
    static void conv_rows_##OB##_##XB(const vec *in, int cin, int h, int w, int margin,          \
                                      const float *weight, int o0, vec *out) {                   \
        const int oh = h - K + 1, ow = w - K + 1;                                                \
        for (int y = 0; y < oh; ++y)                                                             \
            for (int x0 = 0; x0 < ow; x0 += XB) {                                                \
                vec acc[OB][XB] = {{{0}}};                                                       \
                const int ky0 = margin > y ? margin - y : 0;                                     \
                const int ky1 = h - margin - y < K ? h - margin - y : K;                         \
                for (int c = 0; c < cin; ++c)                                                    \
                    for (int ky = ky0; ky < ky1; ++ky) {                                         \
                        const vec *row = in + ((int64_t)c * h + y + ky) * w + x0;                 \
                        for (int kx = 0; kx < K; ++kx)                                           \
                            for (int o = 0; o < OB; ++o) {                                       \
                                const float wt = weight[((o0 + o) * cin + c) * TAPS + ky * K + kx]; \
                                for (int i = 0; i < XB; ++i) acc[o][i] += wt * row[kx + i];      \
                            }                                                                    \
                    }                                                                            \
                for (int o = 0; o < OB; ++o)                                                     \
                    for (int i = 0; i < XB; ++i)                                                 \
                        out[((int64_t)(o0 + o) * oh + y) * ow + x0 + i] += acc[o][i];            \
            }                                                                                    \
    }
CONV_ROWS(2, 4)
CONV_ROWS(2, 5)
CONV_ROWS(2, 7)
CONV_ROWS(1, 8)

/* The rows of `in` outside [margin, h - margin) are zeros, and their taps are skipped. */
static void conv_acc_rows(const vec *in, int cin, int h, int w, int margin, const float *weight,
                          int cout, vec *out) {
    const int ow = w - K + 1;  /* every width here is even: 28, 10, 14 or 32 */
    int o0 = 0;
    for (; o0 + 1 < cout; o0 += 2) {
        if (ow % 7 == 0) conv_rows_2_7(in, cin, h, w, margin, weight, o0, out);
        else if (ow % 5 == 0) conv_rows_2_5(in, cin, h, w, margin, weight, o0, out);
        else conv_rows_2_4(in, cin, h, w, margin, weight, o0, out);
    }
    if (o0 < cout) conv_rows_1_8(in, cin, h, w, margin, weight, o0, out);  /* only for width 32 */
}

static void conv_acc(const vec *in, int cin, int h, int w, const float *weight, int cout, vec *out) {
    conv_acc_rows(in, cin, h, w, 0, weight, cout, out);
}

/* The transposed convolution: grad_in[c][i][j] += sum over o, ky, kx of
 * weight[o][c][ky][kx] * grad_out[o][i-ky][j-kx], as a valid convolution of grad_out padded by
 * 4 with the flipped, transposed kernel. grad_out: [cout][oh][ow]; grad_in: [cin][oh+4][ow+4];
 * pad: scratch of cout*(oh+8)*(ow+8) vectors. */
static void conv_transpose_acc(const vec *grad_out, int cout, int oh, int ow, const float *weight,
                               int cin, vec *grad_in, vec *pad) {
    const int ph = oh + 2 * (K - 1), pw = ow + 2 * (K - 1);
    float flipped[C2 * C1 * TAPS > C1 * MAX_CIN * TAPS ? C2 * C1 * TAPS : C1 * MAX_CIN * TAPS];
    for (int o = 0; o < cout; ++o)
        for (int c = 0; c < cin; ++c)
            for (int t = 0; t < TAPS; ++t)
                flipped[(c * cout + o) * TAPS + (TAPS - 1 - t)] = weight[(o * cin + c) * TAPS + t];
    memset(pad, 0, sizeof(vec) * cout * ph * pw);
    for (int o = 0; o < cout; ++o)
        for (int y = 0; y < oh; ++y)
            memcpy(pad + ((int64_t)o * ph + y + K - 1) * pw + K - 1,
                   grad_out + ((int64_t)o * oh + y) * ow, sizeof(vec) * ow);
    conv_acc_rows(pad, cout, ph, pw, K - 1, flipped, cin, grad_in);
}

/* grad_w[o][c][ky][kx] += sum over lanes, y, x of grad_out[o][y][x] * in[c][y+ky][x+kx];
 * cout is even (6 or 16): two output channels at a time keep ten accumulators busy. */
static void conv_weight_grad(const vec *grad_out, int cout, const vec *in, int cin, int h, int w,
                             float *grad_w) {
    const int oh = h - K + 1, ow = w - K + 1;
    for (int o = 0; o < cout; o += 2)
        for (int c = 0; c < cin; ++c)
            for (int ky = 0; ky < K; ++ky) {
                vec acc[2][K] = {{{0}}};
                for (int y = 0; y < oh; ++y) {
                    const vec *g0 = grad_out + ((int64_t)o * oh + y) * ow, *g1 = g0 + oh * ow;
                    const vec *row = in + ((int64_t)c * h + y + ky) * w;
                    for (int x = 0; x < ow; ++x)
                        for (int kx = 0; kx < K; ++kx) {
                            acc[0][kx] += g0[x] * row[x + kx];
                            acc[1][kx] += g1[x] * row[x + kx];
                        }
                }
                for (int i = 0; i < 2; ++i)
                    for (int kx = 0; kx < K; ++kx)
                        grad_w[((o + i) * cin + c) * TAPS + ky * K + kx] += hsum(acc[i][kx]);
            }
}

/* Pooled values -> pre-pool map: grad[c][2y+a][2x+b] = pooled[c][y][x] where the window's
 * winner is (a, b), else 0 (the max-pool backward and its R-operator alike). */
static void unpool(const vec *pooled, const veci *idx, int c, int ph, int pw, vec *grad) {
    for (int ch = 0; ch < c; ++ch)
        for (int y = 0; y < ph; ++y)
            for (int x = 0; x < pw; ++x) {
                const int64_t at = ((int64_t)ch * ph + y) * pw + x;
                for (int q = 0; q < 4; ++q)
                    grad[((int64_t)ch * 2 * ph + 2 * y + q / 2) * 2 * pw + 2 * x + q % 2] =
                        vselect(idx[at] == q, pooled[at], (vec){0});
            }
}

/* Pre-pool map -> the winners' values, + bias, times the ReLU mask of the block's output. */
static void pool_select(const vec *map, const veci *idx, const float *bias, const vec *relu_out,
                        int c, int ph, int pw, vec *out) {
    for (int ch = 0; ch < c; ++ch)
        for (int y = 0; y < ph; ++y)
            for (int x = 0; x < pw; ++x) {
                const int64_t at = ((int64_t)ch * ph + y) * pw + x;
                vec v = {0};
                for (int q = 0; q < 4; ++q)
                    v = vselect(idx[at] == q, map[((int64_t)ch * 2 * ph + 2 * y + q / 2) * 2 * pw + 2 * x + q % 2], v);
                v += bias[ch];
                out[at] = vselect(relu_out[at] > (vec){0}, v, (vec){0});
            }
}

/* Gradient through a ReLU with output `out`, then (grad_bias non-null) the sum over lanes and
 * positions into the bias. */
static void relu_grad(const vec *grad, const vec *out, int c, int n, vec *result, float *grad_bias) {
    for (int ch = 0; ch < c; ++ch) {
        vec sum = {0};
        for (int i = 0; i < n; ++i) {
            const int64_t at = (int64_t)ch * n + i;
            result[at] = vselect(out[at] > (vec){0}, grad[at], (vec){0});
            sum += result[at];
        }
        if (grad_bias) grad_bias[ch] += hsum(sum);
    }
}

/* y[o] (+)= bias[o] + sum over i of w[o][i] * x[i]: a dense layer on LANES images (bias may be
 * NULL; `accumulate` adds to y). Four outputs at a time share each load of x[i]. */
static void dense(const vec *x, int nin, const float *w, const float *bias, int nout, vec *y,
                  int accumulate) {
    int o = 0;
    for (; o + 4 <= nout; o += 4) {
        vec acc[4];
        for (int k = 0; k < 4; ++k) acc[k] = (accumulate ? y[o + k] : (vec){0}) + (bias ? bias[o + k] : 0.f);
        const float *w0 = w + (int64_t)o * nin;
        for (int i = 0; i < nin; ++i) {
            const vec xi = x[i];
            for (int k = 0; k < 4; ++k) acc[k] += w0[k * nin + i] * xi;
        }
        for (int k = 0; k < 4; ++k) y[o + k] = acc[k];
    }
    for (; o < nout; ++o) {
        vec acc = (accumulate ? y[o] : (vec){0}) + (bias ? bias[o] : 0.f);
        for (int i = 0; i < nin; ++i) acc += w[(int64_t)o * nin + i] * x[i];
        y[o] = acc;
    }
}

/* x[i] (+)= sum over o of w[o][i] * y[o]: the input gradient of a dense layer; nin is a
 * multiple of 4 (400, 120, 84). */
static void dense_transpose(const vec *y, int nout, const float *w, int nin, vec *x, int accumulate) {
    for (int i = 0; i < nin; i += 4) {
        vec acc[4];
        for (int k = 0; k < 4; ++k) acc[k] = accumulate ? x[i + k] : (vec){0};
        for (int o = 0; o < nout; ++o) {
            const vec yo = y[o];
            const float *row = w + (int64_t)o * nin + i;
            for (int k = 0; k < 4; ++k) acc[k] += row[k] * yo;
        }
        for (int k = 0; k < 4; ++k) x[i + k] = acc[k];
    }
}

/* grad_w[o][i] += sum over lanes of y[o] * x[i]; grad_b[o] likewise of y[o] (grad_b may be
 * NULL). Lanes are taken apart so each row update is a plain vectorizable loop over i. */
static void dense_weight_grad(const vec *y, int nout, const vec *x, int nin, float *grad_w,
                              float *grad_b) {
    float xt[LANES][FEATURES], yt[LANES][MAX_CLASSES > 120 ? MAX_CLASSES : 120];
    for (int i = 0; i < nin; ++i)
        for (int l = 0; l < LANES; ++l) xt[l][i] = x[i][l];
    for (int o = 0; o < nout; ++o)
        for (int l = 0; l < LANES; ++l) yt[l][o] = y[o][l];
    for (int o = 0; o < nout; ++o) {
        float *row = grad_w + (int64_t)o * nin;
        for (int l = 0; l < LANES; ++l) {
            const float d = yt[l][o];
            if (d == 0.f) continue;  /* padding lanes and ReLU-blocked units */
            const float *xl = xt[l];
            for (int i = 0; i < nin; ++i) row[i] += d * xl[i];
        }
        if (grad_b) grad_b[o] += hsum(y[o]);
    }
}

static void relu_mask(vec *grad, const vec *out, int n) {
    for (int i = 0; i < n; ++i) grad[i] = vselect(out[i] > (vec){0}, grad[i], (vec){0});
}

/* Where each layer sits in a net's flat parameter row (named_parameters() order). */
typedef struct { int64_t w1, b1, w2, b2, f1, g1, f2, g2, f3, g3; } Layout;
static Layout layout_of(int cin, int classes) {
    Layout l;
    l.w1 = 0; l.b1 = l.w1 + C1 * cin * TAPS; l.w2 = l.b1 + C1; l.b2 = l.w2 + C2 * C1 * TAPS;
    l.f1 = l.b2 + C2; l.g1 = l.f1 + H1 * FEATURES; l.f2 = l.g1 + H1; l.g2 = l.f2 + H2 * H1;
    l.f3 = l.g2 + H2; l.g3 = l.f3 + classes * H2;
    return l;
}

/* Per-thread scratch of block_step: activations, their R, and the backward maps. */
typedef struct {
    vec p1[C1 * S1 * S1], p2[FEATURES], f1[H1], f2[H2], z3[MAX_CLASSES];
    veci i1[C1 * S1 * S1], i2[FEATURES];
    vec r1[C1 * S1 * S1], r2[FEATURES], rf1[H1], rf2[H2], rz3[MAX_CLASSES];
    vec map1[C1 * A1 * A1], map2[C2 * A2 * A2];
    vec dz3[MAX_CLASSES], dz2[H2], dz1[H1], dh2[FEATURES];
    vec rdz3[MAX_CLASSES], rdz2[H2], rdz1[H1], rdh2[FEATURES];
    vec dp2[FEATURES], da2[C2 * A2 * A2], dh1[C1 * S1 * S1], dp1[C1 * S1 * S1], da1[C1 * A1 * A1];
    vec rdp2[FEATURES], rda2[C2 * A2 * A2], rdh1[C1 * S1 * S1], rdp1[C1 * S1 * S1], rda1[C1 * A1 * A1];
    vec pad[C1 * (A1 + 8) * (A1 + 8)];
} Scratch;

/* Cross-entropy -<q, log softmax(z)> of the first `lanes` lanes against their targets q
 * ([LANES][classes], any real values; s = their sum, 1 for class probabilities):
 * dz3 = scale (s p - q), with u R{dz3} = scale s (p*rz - p <p, rz>), the slope
 * <u, gradient> = <dz3, rz3> added to *slope and, unless NULL, rz - <p, rz> written to
 * r_logits ([LANES][classes]: minus the slope's derivative in q, over scale); the other lanes
 * get zeros. Returns the summed loss s logsumexp(z) - <q, z> of those lanes. */
static float softmax_cross_entropy(const float *q, int lanes, int classes, float scale, int with_r,
                                   float *slope, float *r_logits, Scratch *m) {
    float loss = 0.f;
    for (int l = 0; l < LANES; ++l) {
        float *rl = r_logits ? r_logits + l * classes : 0;
        if (l >= lanes) {
            for (int o = 0; o < classes; ++o) m->dz3[o][l] = m->rdz3[o][l] = 0.f;
            if (rl) for (int o = 0; o < classes; ++o) rl[o] = 0.f;
            continue;
        }
        const float *ql = q + (int64_t)l * classes;
        float top = m->z3[0][l], total = 0.f, qz = 0.f, qs = 0.f, p[MAX_CLASSES];
        for (int o = 1; o < classes; ++o) top = m->z3[o][l] > top ? m->z3[o][l] : top;
        for (int o = 0; o < classes; ++o) {
            total += p[o] = expf(m->z3[o][l] - top);
            qz += ql[o] * m->z3[o][l];
            qs += ql[o];
        }
        loss += qs * (logf(total) + top) - qz;
        float p_rz = 0.f;
        for (int o = 0; o < classes; ++o) {
            p[o] /= total;
            if (with_r) p_rz += p[o] * m->rz3[o][l];
        }
        for (int o = 0; o < classes; ++o) {
            m->dz3[o][l] = scale * (qs * p[o] - ql[o]);
            if (with_r) {
                m->rdz3[o][l] = scale * qs * p[o] * (m->rz3[o][l] - p_rz);
                *slope += m->dz3[o][l] * m->rz3[o][l];
            }
            if (rl) rl[o] = m->rz3[o][l] - p_rz;
        }
    }
    return loss;
}

/* One block of LANES images (the first `lanes` of them real) through one net: forward and loss
 * against the targets q ([LANES][classes]); the gradient added to grad (unless NULL); with u,
 * the R-operator passes: R of the gradient added to r_grad, R of the input gradient written to
 * rdx (unless NULL), R of the logits less their mean under softmax, R{z} - <p, R{z}>, written
 * to r_logits ([LANES][classes], unless NULL: the slope's derivative in the targets), and
 * the slope <u, gradient> = R{loss} added to *slope. Returns the summed loss of the real
 * lanes. */
static float block_step(const vec *x, const float *q, int lanes, int cin, int classes,
                        const float *w, const float *u, float scale, float *grad, float *r_grad,
                        vec *rdx, float *r_logits, float *slope, Scratch *m) {
    const Layout L = layout_of(cin, classes);
    /* forward */
    conv_pool_relu(x, cin, SIDE, SIDE, w + L.w1, w + L.b1, C1, m->p1, m->i1);
    conv_pool_relu(m->p1, C1, S1, S1, w + L.w2, w + L.b2, C2, m->p2, m->i2);
    dense(m->p2, FEATURES, w + L.f1, w + L.g1, H1, m->f1, 0);
    relu_mask(m->f1, m->f1, H1);
    dense(m->f1, H1, w + L.f2, w + L.g2, H2, m->f2, 0);
    relu_mask(m->f2, m->f2, H2);
    dense(m->f2, H2, w + L.f3, w + L.g3, classes, m->z3, 0);
    if (u) {  /* R-forward: derivatives of the activations along u */
        memset(m->map1, 0, sizeof(m->map1));
        conv_acc(x, cin, SIDE, SIDE, u + L.w1, C1, m->map1);
        pool_select(m->map1, m->i1, u + L.b1, m->p1, C1, S1, S1, m->r1);
        memset(m->map2, 0, sizeof(m->map2));
        conv_acc(m->r1, C1, S1, S1, w + L.w2, C2, m->map2);
        conv_acc(m->p1, C1, S1, S1, u + L.w2, C2, m->map2);
        pool_select(m->map2, m->i2, u + L.b2, m->p2, C2, S2, S2, m->r2);
        dense(m->p2, FEATURES, u + L.f1, u + L.g1, H1, m->rf1, 0);
        dense(m->r2, FEATURES, w + L.f1, 0, H1, m->rf1, 1);
        relu_mask(m->rf1, m->f1, H1);
        dense(m->f1, H1, u + L.f2, u + L.g2, H2, m->rf2, 0);
        dense(m->rf1, H1, w + L.f2, 0, H2, m->rf2, 1);
        relu_mask(m->rf2, m->f2, H2);
        dense(m->f2, H2, u + L.f3, u + L.g3, classes, m->rz3, 0);
        dense(m->rf2, H2, w + L.f3, 0, classes, m->rz3, 1);
    }
    const float loss = softmax_cross_entropy(q, lanes, classes, scale, u != 0, slope,
                                             u ? r_logits : 0, m);
    /* dense backward (and its R), output layer first */
    if (grad) dense_weight_grad(m->dz3, classes, m->f2, H2, grad + L.f3, grad + L.g3);
    dense_transpose(m->dz3, classes, w + L.f3, H2, m->dz2, 0);
    relu_mask(m->dz2, m->f2, H2);
    if (grad) dense_weight_grad(m->dz2, H2, m->f1, H1, grad + L.f2, grad + L.g2);
    dense_transpose(m->dz2, H2, w + L.f2, H1, m->dz1, 0);
    relu_mask(m->dz1, m->f1, H1);
    if (grad) dense_weight_grad(m->dz1, H1, m->p2, FEATURES, grad + L.f1, grad + L.g1);
    dense_transpose(m->dz1, H1, w + L.f1, FEATURES, m->dh2, 0);
    if (u) {
        dense_weight_grad(m->rdz3, classes, m->f2, H2, r_grad + L.f3, r_grad + L.g3);
        dense_weight_grad(m->dz3, classes, m->rf2, H2, r_grad + L.f3, 0);
        dense_transpose(m->rdz3, classes, w + L.f3, H2, m->rdz2, 0);
        dense_transpose(m->dz3, classes, u + L.f3, H2, m->rdz2, 1);
        relu_mask(m->rdz2, m->f2, H2);
        dense_weight_grad(m->rdz2, H2, m->f1, H1, r_grad + L.f2, r_grad + L.g2);
        dense_weight_grad(m->dz2, H2, m->rf1, H1, r_grad + L.f2, 0);
        dense_transpose(m->rdz2, H2, w + L.f2, H1, m->rdz1, 0);
        dense_transpose(m->dz2, H2, u + L.f2, H1, m->rdz1, 1);
        relu_mask(m->rdz1, m->f1, H1);
        dense_weight_grad(m->rdz1, H1, m->p2, FEATURES, r_grad + L.f1, r_grad + L.g1);
        dense_weight_grad(m->dz1, H1, m->r2, FEATURES, r_grad + L.f1, 0);
        dense_transpose(m->rdz1, H1, w + L.f1, FEATURES, m->rdh2, 0);
        dense_transpose(m->dz1, H1, u + L.f1, FEATURES, m->rdh2, 1);
    }
    /* conv blocks backward (and R) */
    relu_grad(m->dh2, m->p2, C2, S2 * S2, m->dp2, grad ? grad + L.b2 : 0);
    unpool(m->dp2, m->i2, C2, S2, S2, m->da2);
    if (grad) conv_weight_grad(m->da2, C2, m->p1, C1, S1, S1, grad + L.w2);
    memset(m->dh1, 0, sizeof(m->dh1));
    conv_transpose_acc(m->da2, C2, A2, A2, w + L.w2, C1, m->dh1, m->pad);
    relu_grad(m->dh1, m->p1, C1, S1 * S1, m->dp1, grad ? grad + L.b1 : 0);
    unpool(m->dp1, m->i1, C1, S1, S1, m->da1);
    if (grad) conv_weight_grad(m->da1, C1, x, cin, SIDE, SIDE, grad + L.w1);
    if (!u) return loss;
    relu_grad(m->rdh2, m->p2, C2, S2 * S2, m->rdp2, r_grad + L.b2);
    unpool(m->rdp2, m->i2, C2, S2, S2, m->rda2);
    conv_weight_grad(m->rda2, C2, m->p1, C1, S1, S1, r_grad + L.w2);
    conv_weight_grad(m->da2, C2, m->r1, C1, S1, S1, r_grad + L.w2);
    memset(m->rdh1, 0, sizeof(m->rdh1));
    conv_transpose_acc(m->rda2, C2, A2, A2, w + L.w2, C1, m->rdh1, m->pad);
    conv_transpose_acc(m->da2, C2, A2, A2, u + L.w2, C1, m->rdh1, m->pad);
    relu_grad(m->rdh1, m->p1, C1, S1 * S1, m->rdp1, r_grad + L.b1);
    unpool(m->rdp1, m->i1, C1, S1, S1, m->rda1);
    conv_weight_grad(m->rda1, C1, x, cin, SIDE, SIDE, r_grad + L.w1);
    if (rdx) {
        memset(rdx, 0, sizeof(vec) * cin * SIDE * SIDE);
        conv_transpose_acc(m->rda1, C1, A1, A1, w + L.w1, cin, rdx, m->pad);
        conv_transpose_acc(m->da1, C1, A1, A1, u + L.w1, cin, rdx, m->pad);
    }
    return loss;
}

/* The summed loss and its gradient (times `scale`) for N nets on `batch` shared images, and
 * with a direction u (flat like theta) R of the gradient (= H u), R of the input gradient, R
 * of the logits and the slope <u, gradient>. x: [blocks][cin][32][32][LANES], blocks =
 * ceil(batch / LANES), padding lanes past the last image; targets: [blocks * LANES][classes]
 * class probabilities (padding rows unread); theta, u: [N][stride]. Each net's blocks are split
 * into `parts` contiguous ranges, one task each, so all threads work even for one net: losses
 * and slopes [N][parts], grad and r_grad [N][parts][stride] get each task's sums (the caller
 * adds the parts); grad may be NULL (not computed); rdx: [N][blocks][cin][32][32][LANES] or
 * NULL; r_logits: [N][blocks * LANES][classes] or NULL. */
void lenet_step(const float *x, const float *targets, int cin, int classes, int64_t batch,
                int64_t nets, int64_t parts, const float *theta, const float *u, int64_t stride,
                float scale, float *losses, float *grad, float *r_grad, float *rdx,
                float *r_logits, float *slopes, int threads) {
    const int64_t blocks = (batch + LANES - 1) / LANES;
#pragma omp parallel num_threads(threads)
    {
        Scratch *m = 0;
        if (posix_memalign((void **)&m, 64, sizeof(Scratch))) abort();
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < nets * parts; ++task) {
            const int64_t n = task / parts, part = task % parts;
            const int64_t first = blocks * part / parts, last = blocks * (part + 1) / parts;
            float *g = grad ? grad + task * stride : 0, *rg = u ? r_grad + task * stride : 0;
            if (g) memset(g, 0, sizeof(float) * stride);
            if (rg) memset(rg, 0, sizeof(float) * stride);
            float loss = 0.f, slope = 0.f;
            for (int64_t b = first; b < last; ++b) {
                const int lanes = batch - b * LANES < LANES ? (int)(batch - b * LANES) : LANES;
                loss += block_step((const vec *)x + b * cin * SIDE * SIDE,
                                   targets + b * LANES * classes, lanes, cin, classes,
                                   theta + n * stride, u ? u + n * stride : 0, scale, g, rg,
                                   rdx ? (vec *)rdx + (n * blocks + b) * cin * SIDE * SIDE : 0,
                                   r_logits ? r_logits + (n * blocks + b) * LANES * classes : 0,
                                   &slope, m);
            }
            losses[task] = loss;
            if (slopes) slopes[task] = slope;
        }
        free(m);
    }
}

/* Inference: the conv blocks' output features of N nets. x: [B][cin][32][32] (plain layout);
 * theta: [N][stride] flat parameters; out: [N][B][400], flattened as PyTorch does. */
void lenet_features(const float *x, int64_t batch, int cin, const float *theta, int64_t stride,
                    int64_t nets, float *out, int threads) {
    const int64_t blocks = (batch + LANES - 1) / LANES;
    const Layout L = layout_of(cin, 0);  /* only the conv weights are read */
#pragma omp parallel num_threads(threads)
    {
        vec *xin = 0;  /* heap, not stack: OpenMP threads may have small stacks */
        if (posix_memalign((void **)&xin, 64, sizeof(vec) * (MAX_CIN * SIDE * SIDE + C1 * S1 * S1 + FEATURES)))
            abort();
        vec *pool1 = xin + MAX_CIN * SIDE * SIDE, *pool2 = pool1 + C1 * S1 * S1;
#pragma omp for schedule(dynamic, 4)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t b0 = blk * LANES;
            const int lanes = batch - b0 < LANES ? (int)(batch - b0) : LANES;
            for (int64_t i = 0; i < (int64_t)cin * SIDE * SIDE; ++i) {
                vec v = {0};
                for (int l = 0; l < lanes; ++l) v[l] = x[(b0 + l) * cin * SIDE * SIDE + i];
                xin[i] = v;
            }
            for (int64_t n = 0; n < nets; ++n) {
                const float *w = theta + n * stride;
                conv_pool_relu(xin, cin, SIDE, SIDE, w + L.w1, w + L.b1, C1, pool1, 0);
                conv_pool_relu(pool1, C1, S1, S1, w + L.w2, w + L.b2, C2, pool2, 0);
                float *dst = out + (n * batch + b0) * FEATURES;
                for (int l = 0; l < lanes; ++l)
                    for (int f = 0; f < FEATURES; ++f) dst[l * FEATURES + f] = pool2[f][l];
            }
        }
        free(xin);
    }
}
