/* LeNet's convolutional features for N nets on B shared images, fused, for the CPU.
 *
 * Computes, for every net n and image b, relu(maxpool2(conv5x5(relu(maxpool2(conv5x5(x)))))),
 * i.e. LeNet's two conv blocks, flattened as PyTorch does (channel, row, column): 16x5x5 = 400.
 *
 * Layout: each thread takes 8 images at a time and stores them image-last ([C][H][W][8]), so
 * every multiply-add is one 8-wide vector: a weight broadcast times 8 images. The 2x2 max-pool
 * is fused into the convolution (the four positions of a window are accumulated together), the
 * images of a block are transposed once and reused by all N nets, and the intermediate maps stay
 * in the thread's cache. Compiled at first use by datadistill.kernels (gcc/cc, -O3 -march=native).
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
#define LANES 8
#define K 5
#define OC_BLOCK 2

typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 vmax(v8 a, v8 b) {
    const v8i a_wins = a > b;
    return (v8)((a_wins & (v8i)a) | (~a_wins & (v8i)b));
}

/* in: [cin][h][w][8]; weight: [cout][cin][5][5]; out: [cout][(h-4)/2][(w-4)/2][8] */
static void conv_pool_relu(const v8 *in, int cin, int h, int w, const float *weight,
                           const float *bias, int cout, v8 *out) {
    const int ph = (h - K + 1) / 2, pw = (w - K + 1) / 2;
    for (int o0 = 0; o0 < cout; o0 += OC_BLOCK) {
        for (int py = 0; py < ph; ++py) {
            for (int px = 0; px < pw; ++px) {
                v8 acc[OC_BLOCK][4] = {{{0}}};
                for (int c = 0; c < cin; ++c) {
                    const v8 *plane = in + (int64_t)c * h * w;
                    for (int ky = 0; ky < K; ++ky) {
                        const v8 *row0 = plane + (2 * py + ky) * w + 2 * px;
                        const v8 *row1 = row0 + w;
                        for (int kx = 0; kx < K; ++kx) {
                            const v8 i00 = row0[kx], i01 = row0[kx + 1];
                            const v8 i10 = row1[kx], i11 = row1[kx + 1];
                            for (int o = 0; o < OC_BLOCK; ++o) {
                                const float wt = weight[(((int64_t)(o0 + o) * cin + c) * K + ky) * K + kx];
                                acc[o][0] += wt * i00;
                                acc[o][1] += wt * i01;
                                acc[o][2] += wt * i10;
                                acc[o][3] += wt * i11;
                            }
                        }
                    }
                }
                for (int o = 0; o < OC_BLOCK; ++o) {
                    v8 m = acc[o][0];
                    for (int q = 1; q < 4; ++q)
                        m = vmax(m, acc[o][q]);
                    m += bias[o0 + o];
                    const v8 zero = {0};
                    out[((int64_t)(o0 + o) * ph + py) * pw + px] = vmax(m, zero);
                }
            }
        }
    }
}

/* x: [B][cin][32][32] (already padded); w1: [N][6][cin][5][5]; b1: [N][6];
 * w2: [N][16][6][5][5]; b2: [N][16]; out: [N][B][400]. */
void lenet_features(const float *x, int64_t batch, int cin, const float *w1, const float *b1,
                    const float *w2, const float *b2, int64_t nets, float *out, int threads) {
    enum { SIDE = 32, C1 = 6, S1 = 14, C2 = 16, S2 = 5, FEATURES = C2 * S2 * S2 };
    const int64_t blocks = (batch + LANES - 1) / LANES;
#pragma omp parallel num_threads(threads)
    {
        v8 *xin = __builtin_alloca(sizeof(v8) * cin * SIDE * SIDE + 32);
        xin = (v8 *)(((uintptr_t)xin + 31) & ~(uintptr_t)31);
        v8 pool1[C1 * S1 * S1] __attribute__((aligned(32)));
        v8 pool2[C2 * S2 * S2] __attribute__((aligned(32)));
#pragma omp for schedule(dynamic, 4)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t b0 = blk * LANES;
            const int lanes = batch - b0 < LANES ? (int)(batch - b0) : LANES;
            for (int64_t i = 0; i < (int64_t)cin * SIDE * SIDE; ++i) {
                v8 v = {0};
                for (int l = 0; l < lanes; ++l)
                    v[l] = x[(b0 + l) * cin * SIDE * SIDE + i];
                xin[i] = v;
            }
            for (int64_t n = 0; n < nets; ++n) {
                conv_pool_relu(xin, cin, SIDE, SIDE, w1 + n * C1 * cin * K * K, b1 + n * C1, C1, pool1);
                conv_pool_relu(pool1, C1, S1, S1, w2 + n * C2 * C1 * K * K, b2 + n * C2, C2, pool2);
                float *dst = out + (n * batch + b0) * FEATURES;
                for (int l = 0; l < lanes; ++l)
                    for (int f = 0; f < FEATURES; ++f)
                        dst[l * FEATURES + f] = pool2[f][l];
            }
        }
    }
}
