/* LeNet's two conv blocks (conv 5x5 -> 2x2 max-pool -> ReLU, twice) for N nets on shared
 * images, on the CPU: the inference pass, and the passes that the meta-gradient needs (forward
 * keeping pooling winners, gradient, and Pearlmutter's R-operator forward and backward for
 * Hessian-vector products). The dense layers stay in PyTorch (datadistill/kernels/lenet.py).
 *
 * Layout: images go 8 at a time into the lanes of one vector ("image-last": [C][H][W][8]), so
 * every multiply-add is a broadcast weight times 8 images and no two lanes ever mix. Each task
 * is one (net, block of 8 images); weight gradients are summed over the lanes of a task and
 * written per task (the caller sums the blocks). Inputs are padded to 32x32 by the caller.
 * Compiled at first use by datadistill.kernels (cc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#define LANES 8
#define K 5
#define TAPS (K * K)
#define MAX_CIN 4 /* input channels; the caller falls back to PyTorch beyond */
enum { SIDE = 32, C1 = 6, A1 = 28, S1 = 14, C2 = 16, A2 = 10, S2 = 5, FEATURES = C2 * S2 * S2 };

static inline v8 vselect(v8i mask, v8 a, v8 b) { return (v8)((mask & (v8i)a) | (~mask & (v8i)b)); }
static inline v8i iselect(v8i mask, v8i a, v8i b) { return (mask & a) | (~mask & b); }
static inline float hsum(v8 v) {
    float s = 0;
    for (int l = 0; l < LANES; ++l) s += v[l];
    return s;
}

/* Fused conv 5x5 (valid) -> 2x2 max-pool -> + bias -> ReLU. in: [cin][h][w]; weight:
 * [cout][cin][5][5]; out: [cout][(h-4)/2][(w-4)/2]. idx (optional) gets the winning position
 * of each window, 0..3 in row-major order, the first of equal maxima (as PyTorch's kernel). */
static void conv_pool_relu(const v8 *in, int cin, int h, int w, const float *weight,
                           const float *bias, int cout, v8 *out, v8i *idx) {
    const int ph = (h - K + 1) / 2, pw = (w - K + 1) / 2;
    for (int o0 = 0; o0 < cout; o0 += 2) {
        for (int py = 0; py < ph; ++py) {
            for (int px = 0; px < pw; ++px) {
                v8 acc[2][4] = {{{0}}};
                for (int c = 0; c < cin; ++c) {
                    const v8 *plane = in + (int64_t)c * h * w;
                    for (int ky = 0; ky < K; ++ky) {
                        const v8 *row0 = plane + (2 * py + ky) * w + 2 * px, *row1 = row0 + w;
                        for (int kx = 0; kx < K; ++kx) {
                            const v8 i00 = row0[kx], i01 = row0[kx + 1];
                            const v8 i10 = row1[kx], i11 = row1[kx + 1];
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
                    v8 m = acc[o][0];
                    v8i arg = {0};
                    for (int q = 1; q < 4; ++q) {
                        const v8i better = acc[o][q] > m;
                        m = vselect(better, acc[o][q], m);
                        arg = iselect(better, (v8i){0} + q, arg);
                    }
                    const int64_t at = ((int64_t)(o0 + o) * ph + py) * pw + px;
                    m += bias[o0 + o];
                    out[at] = vselect(m > (v8){0}, m, (v8){0});
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
    static void conv_rows_##OB##_##XB(const v8 *in, int cin, int h, int w, const float *weight,  \
                                      int o0, v8 *out) {                                         \
        const int oh = h - K + 1, ow = w - K + 1;                                                \
        for (int y = 0; y < oh; ++y)                                                             \
            for (int x0 = 0; x0 < ow; x0 += XB) {                                                \
                v8 acc[OB][XB] = {{{0}}};                                                        \
                for (int c = 0; c < cin; ++c)                                                    \
                    for (int ky = 0; ky < K; ++ky) {                                             \
                        const v8 *row = in + ((int64_t)c * h + y + ky) * w + x0;                 \
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

static void conv_acc(const v8 *in, int cin, int h, int w, const float *weight, int cout, v8 *out) {
    const int ow = w - K + 1;  /* every width here is even: 28, 10, 14 or 32 */
    int o0 = 0;
    for (; o0 + 1 < cout; o0 += 2) {
        if (ow % 7 == 0) conv_rows_2_7(in, cin, h, w, weight, o0, out);
        else if (ow % 5 == 0) conv_rows_2_5(in, cin, h, w, weight, o0, out);
        else conv_rows_2_4(in, cin, h, w, weight, o0, out);
    }
    if (o0 < cout) conv_rows_1_8(in, cin, h, w, weight, o0, out);  /* only for width 32 */
}

/* The transposed convolution: grad_in[c][i][j] += sum over o, ky, kx of
 * weight[o][c][ky][kx] * grad_out[o][i-ky][j-kx], as a valid convolution of grad_out padded by
 * 4 with the flipped, transposed kernel. grad_out: [cout][oh][ow]; grad_in: [cin][oh+4][ow+4];
 * pad: scratch of cout*(oh+8)*(ow+8) vectors. */
static void conv_transpose_acc(const v8 *grad_out, int cout, int oh, int ow, const float *weight,
                               int cin, v8 *grad_in, v8 *pad) {
    const int ph = oh + 2 * (K - 1), pw = ow + 2 * (K - 1);
    float flipped[C2 * C1 * TAPS > C1 * MAX_CIN * TAPS ? C2 * C1 * TAPS : C1 * MAX_CIN * TAPS];
    for (int o = 0; o < cout; ++o)
        for (int c = 0; c < cin; ++c)
            for (int t = 0; t < TAPS; ++t)
                flipped[(c * cout + o) * TAPS + (TAPS - 1 - t)] = weight[(o * cin + c) * TAPS + t];
    memset(pad, 0, sizeof(v8) * cout * ph * pw);
    for (int o = 0; o < cout; ++o)
        for (int y = 0; y < oh; ++y)
            memcpy(pad + ((int64_t)o * ph + y + K - 1) * pw + K - 1,
                   grad_out + ((int64_t)o * oh + y) * ow, sizeof(v8) * ow);
    conv_acc(pad, cout, ph, pw, flipped, cin, grad_in);
}

/* grad_w[o][c][ky][kx] += sum over lanes, y, x of grad_out[o][y][x] * in[c][y+ky][x+kx];
 * cout is even (6 or 16): two output channels at a time keep ten accumulators busy. */
static void conv_weight_grad(const v8 *grad_out, int cout, const v8 *in, int cin, int h, int w,
                             float *grad_w) {
    const int oh = h - K + 1, ow = w - K + 1;
    for (int o = 0; o < cout; o += 2)
        for (int c = 0; c < cin; ++c)
            for (int ky = 0; ky < K; ++ky) {
                v8 acc[2][K] = {{{0}}};
                for (int y = 0; y < oh; ++y) {
                    const v8 *g0 = grad_out + ((int64_t)o * oh + y) * ow, *g1 = g0 + oh * ow;
                    const v8 *row = in + ((int64_t)c * h + y + ky) * w;
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
static void unpool(const v8 *pooled, const v8i *idx, int c, int ph, int pw, v8 *grad) {
    for (int ch = 0; ch < c; ++ch)
        for (int y = 0; y < ph; ++y)
            for (int x = 0; x < pw; ++x) {
                const int64_t at = ((int64_t)ch * ph + y) * pw + x;
                for (int q = 0; q < 4; ++q)
                    grad[((int64_t)ch * 2 * ph + 2 * y + q / 2) * 2 * pw + 2 * x + q % 2] =
                        vselect(idx[at] == q, pooled[at], (v8){0});
            }
}

/* Pre-pool map -> the winners' values, + bias, times the ReLU mask of the block's output. */
static void pool_select(const v8 *map, const v8i *idx, const float *bias, const v8 *relu_out,
                        int c, int ph, int pw, v8 *out) {
    for (int ch = 0; ch < c; ++ch)
        for (int y = 0; y < ph; ++y)
            for (int x = 0; x < pw; ++x) {
                const int64_t at = ((int64_t)ch * ph + y) * pw + x;
                v8 v = {0};
                for (int q = 0; q < 4; ++q)
                    v = vselect(idx[at] == q, map[((int64_t)ch * 2 * ph + 2 * y + q / 2) * 2 * pw + 2 * x + q % 2], v);
                v += bias[ch];
                out[at] = vselect(relu_out[at] > (v8){0}, v, (v8){0});
            }
}

/* Gradient through a ReLU with output `out`, then the sum over lanes and positions into the bias. */
static void relu_grad(const v8 *grad, const v8 *out, int c, int n, v8 *result, float *grad_bias) {
    for (int ch = 0; ch < c; ++ch) {
        v8 sum = {0};
        for (int i = 0; i < n; ++i) {
            const int64_t at = (int64_t)ch * n + i;
            result[at] = vselect(out[at] > (v8){0}, grad[at], (v8){0});
            sum += result[at];
        }
        grad_bias[ch] += hsum(sum);
    }
}

/* The conv weights of net n: the flat parameter vector of each net (row n of `theta`, rows
 * `stride` apart) starts with w1 [6][cin][5][5], b1 [6], w2 [16][6][5][5], b2 [16], as
 * LeNet's named_parameters() order them; the dense layers follow and are not read here. */
typedef struct { const float *w1, *b1, *w2, *b2; } Conv;
static Conv conv_of(const float *theta, int64_t stride, int64_t n, int cin) {
    const float *p = theta + n * stride;
    const Conv c = {p, p + C1 * cin * TAPS, p + C1 * cin * TAPS + C1, p + C1 * cin * TAPS + C1 + C2 * C1 * TAPS};
    return c;
}
static int64_t conv_size(int cin) { return C1 * cin * TAPS + C1 + C2 * C1 * TAPS + C2; }

/* Inference. x: [B][cin][32][32] (plain layout); out: [N][B][400], flattened as PyTorch does. */
void lenet_features(const float *x, int64_t batch, int cin, const float *theta, int64_t stride,
                    int64_t nets, float *out, int threads) {
    const int64_t blocks = (batch + LANES - 1) / LANES;
#pragma omp parallel num_threads(threads)
    {
        v8 xin[MAX_CIN * SIDE * SIDE];
        v8 pool1[C1 * S1 * S1], pool2[FEATURES];
#pragma omp for schedule(dynamic, 4)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t b0 = blk * LANES;
            const int lanes = batch - b0 < LANES ? (int)(batch - b0) : LANES;
            for (int64_t i = 0; i < (int64_t)cin * SIDE * SIDE; ++i) {
                v8 v = {0};
                for (int l = 0; l < lanes; ++l) v[l] = x[(b0 + l) * cin * SIDE * SIDE + i];
                xin[i] = v;
            }
            for (int64_t n = 0; n < nets; ++n) {
                const Conv w = conv_of(theta, stride, n, cin);
                conv_pool_relu(xin, cin, SIDE, SIDE, w.w1, w.b1, C1, pool1, 0);
                conv_pool_relu(pool1, C1, S1, S1, w.w2, w.b2, C2, pool2, 0);
                float *dst = out + (n * batch + b0) * FEATURES;
                for (int l = 0; l < lanes; ++l)
                    for (int f = 0; f < FEATURES; ++f) dst[l * FEATURES + f] = pool2[f][l];
            }
        }
    }
}

/* Training forward, image-last. x: [blocks][cin][32][32][8]. Per task (net n, block b), at
 * [n][b]: h1 [6][14][14][8] and idx1 alike; h2 [16][5][5][8] and idx2 alike. */
void lenet_forward(const float *x, int cin, int64_t blocks, int64_t nets, const float *theta,
                   int64_t stride, float *h1, int32_t *idx1, float *h2, int32_t *idx2, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < nets * blocks; ++task) {
        const int64_t n = task / blocks, b = task % blocks;
        const Conv w = conv_of(theta, stride, n, cin);
        v8 *p1 = (v8 *)h1 + task * C1 * S1 * S1;
        conv_pool_relu((const v8 *)x + b * cin * SIDE * SIDE, cin, SIDE, SIDE, w.w1, w.b1, C1, p1,
                       (v8i *)idx1 + task * C1 * S1 * S1);
        conv_pool_relu(p1, C1, S1, S1, w.w2, w.b2, C2, (v8 *)h2 + task * FEATURES,
                       (v8i *)idx2 + task * FEATURES);
    }
}

/* R-operator forward in the direction u (flat like theta, same stride): rh1, rh2 shaped as
 * h1, h2 (the pooling winners and ReLU masks of the forward are kept). */
void lenet_rforward(const float *x, int cin, int64_t blocks, int64_t nets, const float *theta,
                    const float *u, int64_t stride, const float *h1, const int32_t *idx1,
                    const float *h2, const int32_t *idx2, float *rh1, float *rh2, int threads) {
#pragma omp parallel num_threads(threads)
    {
        v8 map1[C1 * A1 * A1], map2[C2 * A2 * A2];
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < nets * blocks; ++task) {
            const int64_t n = task / blocks, b = task % blocks;
            const Conv w = conv_of(theta, stride, n, cin), r = conv_of(u, stride, n, cin);
            const v8 *p1 = (const v8 *)h1 + task * C1 * S1 * S1;
            v8 *r1 = (v8 *)rh1 + task * C1 * S1 * S1;
            memset(map1, 0, sizeof(map1));
            conv_acc((const v8 *)x + b * cin * SIDE * SIDE, cin, SIDE, SIDE, r.w1, C1, map1);
            pool_select(map1, (const v8i *)idx1 + task * C1 * S1 * S1, r.b1, p1, C1, S1, S1, r1);
            memset(map2, 0, sizeof(map2));
            conv_acc(r1, C1, S1, S1, w.w2, C2, map2);
            conv_acc(p1, C1, S1, S1, r.w2, C2, map2);
            pool_select(map2, (const v8i *)idx2 + task * FEATURES, r.b2,
                        (const v8 *)h2 + task * FEATURES, C2, S2, S2, (v8 *)rh2 + task * FEATURES);
        }
    }
}

/* Gradient of the conv blocks from dh2 (the loss gradient at h2, [N][blocks][400][8]) into
 * grad ([N][blocks][conv weights], laid out as in theta; the caller sums the blocks). With u
 * non-null, also the R-operator backward in the direction u (rh1: the R-forward's output;
 * rdh2: R of dh2) into r_grad, and, with rdx non-null, R of the input gradient into rdx
 * ([N][blocks][cin][32][32][8]). Outputs are overwritten. */
void lenet_backward(const float *x, int cin, int64_t blocks, int64_t nets, const float *theta,
                    const float *u, int64_t stride, const float *h1, const int32_t *idx1,
                    const float *h2, const int32_t *idx2, const float *dh2, float *grad,
                    const float *rh1, const float *rdh2, float *r_grad, float *rdx, int threads) {
    const int nw1 = C1 * cin * TAPS, nw2 = C2 * C1 * TAPS;
    const int64_t size = conv_size(cin);
#pragma omp parallel num_threads(threads)
    {
        v8 dp2[FEATURES], da2[C2 * A2 * A2], dh1[C1 * S1 * S1], dp1[C1 * S1 * S1], da1[C1 * A1 * A1];
        v8 rdp2[FEATURES], rda2[C2 * A2 * A2], rdh1[C1 * S1 * S1], rdp1[C1 * S1 * S1], rda1[C1 * A1 * A1];
        v8 pad[C2 * (A2 + 8) * (A2 + 8) > C1 * (A1 + 8) * (A1 + 8) ? C2 * (A2 + 8) * (A2 + 8) : C1 * (A1 + 8) * (A1 + 8)];
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < nets * blocks; ++task) {
            const int64_t n = task / blocks, b = task % blocks;
            const v8 *xin = (const v8 *)x + b * cin * SIDE * SIDE;
            const v8 *p1 = (const v8 *)h1 + task * C1 * S1 * S1, *p2 = (const v8 *)h2 + task * FEATURES;
            const v8i *i1 = (const v8i *)idx1 + task * C1 * S1 * S1, *i2 = (const v8i *)idx2 + task * FEATURES;
            const Conv w = conv_of(theta, stride, n, cin);
            float *g1 = grad + task * size, *gb1 = g1 + nw1, *g2 = gb1 + C1, *gb2 = g2 + nw2;
            memset(g1, 0, sizeof(float) * size);
            relu_grad((const v8 *)dh2 + task * FEATURES, p2, C2, S2 * S2, dp2, gb2);
            unpool(dp2, i2, C2, S2, S2, da2);
            conv_weight_grad(da2, C2, p1, C1, S1, S1, g2);
            memset(dh1, 0, sizeof(dh1));
            conv_transpose_acc(da2, C2, A2, A2, w.w2, C1, dh1, pad);
            relu_grad(dh1, p1, C1, S1 * S1, dp1, gb1);
            unpool(dp1, i1, C1, S1, S1, da1);
            conv_weight_grad(da1, C1, xin, cin, SIDE, SIDE, g1);
            if (!u) continue;
            const Conv r = conv_of(u, stride, n, cin);
            const v8 *r1 = (const v8 *)rh1 + task * C1 * S1 * S1;
            float *rg1 = r_grad + task * size, *rb1 = rg1 + nw1, *rg2 = rb1 + C1, *rb2 = rg2 + nw2;
            memset(rg1, 0, sizeof(float) * size);
            relu_grad((const v8 *)rdh2 + task * FEATURES, p2, C2, S2 * S2, rdp2, rb2);
            unpool(rdp2, i2, C2, S2, S2, rda2);
            conv_weight_grad(rda2, C2, p1, C1, S1, S1, rg2);
            conv_weight_grad(da2, C2, r1, C1, S1, S1, rg2);
            memset(rdh1, 0, sizeof(rdh1));
            conv_transpose_acc(rda2, C2, A2, A2, w.w2, C1, rdh1, pad);
            conv_transpose_acc(da2, C2, A2, A2, r.w2, C1, rdh1, pad);
            relu_grad(rdh1, p1, C1, S1 * S1, rdp1, rb1);
            unpool(rdp1, i1, C1, S1, S1, rda1);
            conv_weight_grad(rda1, C1, xin, cin, SIDE, SIDE, rg1);
            if (!rdx) continue;
            v8 *rx = (v8 *)rdx + task * cin * SIDE * SIDE;
            memset(rx, 0, sizeof(v8) * cin * SIDE * SIDE);
            conv_transpose_acc(rda1, C1, A1, A1, w.w1, cin, rx, pad);
            conv_transpose_acc(da1, C1, A1, A1, r.w1, cin, rx, pad);
        }
    }
}
