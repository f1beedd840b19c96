/* ConvNet's block tail, instance norm (affine) -> ReLU -> 2x2 average pool, fused into one
 * pass over each feature map, forward and backward, on the CPU.
 *
 * Unfused, PyTorch reads and writes the whole (B, C, H, W) activation six times (norm, ReLU,
 * pool, each way) and at ConvNet sizes that traffic costs more than the convolutions. Here a
 * map (H x W floats, 4 KiB at 32 x 32) is read into L1 once and every step of the block runs
 * on it there. Maps are independent (instance norm has no batch statistics), so OpenMP threads
 * take whole maps. Pooling floors odd sides, as nn.AvgPool2d(2) does; the norm still sees the
 * whole map. Compiled at first use by datadistill.kernels (cc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#include <math.h>

static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* x: (maps, h, w), map m of channel m % channels; z: (maps, h/2, w/2); mean, rstd: (maps). */
void normpool_forward(const float *x, int64_t maps, int channels, int h, int w,
                      const float *gamma, const float *beta, float eps, float *z, float *mean,
                      float *rstd, int threads) {
    const int size = h * w, ph = h / 2, pw = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < maps; ++m) {
        const float *in = x + m * size;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < size; ++i) sum += in[i];
        const float mu = (float)(sum / size);
        double squares = 0.0;
#pragma omp simd reduction(+ : squares)
        for (int i = 0; i < size; ++i) squares += (double)(in[i] - mu) * (in[i] - mu);
        const float r = (float)(1.0 / sqrt(squares / size + eps));
        const int c = (int)(m % channels);
        const float a = gamma[c] * r, s = beta[c] - mu * a;
        float *out = z + m * ph * pw;
        for (int py = 0; py < ph; ++py) {
            const float *row0 = in + 2 * py * w, *row1 = row0 + w;
            for (int px = 0; px < pw; ++px) {
                const float top = relu(a * row0[2 * px] + s) + relu(a * row0[2 * px + 1] + s);
                const float bottom = relu(a * row1[2 * px] + s) + relu(a * row1[2 * px + 1] + s);
                out[py * pw + px] = 0.25f * (top + bottom);
            }
        }
        mean[m] = mu;
        rstd[m] = r;
    }
}

/* dz: (maps, h/2, w/2) the gradient of z; dx: (maps, h, w); dgamma, dbeta: (maps), each map's
 * share of its channel's gradient (the caller sums over the batch). */
void normpool_backward(const float *dz, const float *x, int64_t maps, int channels, int h, int w,
                       const float *gamma, const float *beta, const float *mean, const float *rstd,
                       float *dx, float *dgamma, float *dbeta, int threads) {
    const int size = h * w, ph = h / 2, pw = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < maps; ++m) {
        const float *in = x + m * size, *up = dz + m * ph * pw;
        float *out = dx + m * size;
        const int c = (int)(m % channels);
        const float mu = mean[m], r = rstd[m], a = gamma[c] * r, s = beta[c] - mu * a;
        /* the gradient at the norm's output: a quarter of the pooled gradient where the
         * ReLU passed its input, 0 elsewhere (and in a floored odd row or column) */
        if (h % 2 || w % 2)
            for (int i = 0; i < size; ++i) out[i] = 0.0f;
        for (int py = 0; py < ph; ++py) {
            const float *row0 = in + 2 * py * w, *row1 = row0 + w;
            float *out0 = out + 2 * py * w, *out1 = out0 + w;
            for (int px = 0; px < pw; ++px) {
                const float g = 0.25f * up[py * pw + px];
                out0[2 * px] = a * row0[2 * px] + s > 0.0f ? g : 0.0f;
                out0[2 * px + 1] = a * row0[2 * px + 1] + s > 0.0f ? g : 0.0f;
                out1[2 * px] = a * row1[2 * px] + s > 0.0f ? g : 0.0f;
                out1[2 * px + 1] = a * row1[2 * px + 1] + s > 0.0f ? g : 0.0f;
            }
        }
        double sum = 0.0, dot = 0.0;
#pragma omp simd reduction(+ : sum, dot)
        for (int i = 0; i < size; ++i) {
            sum += out[i];
            dot += (double)out[i] * (in[i] - mu) * r;
        }
        const float mean_dy = (float)(sum / size), mean_dy_xhat = (float)(dot / size);
#pragma omp simd
        for (int i = 0; i < size; ++i)
            out[i] = a * (out[i] - mean_dy - (in[i] - mu) * r * mean_dy_xhat);
        dgamma[m] = (float)dot;
        dbeta[m] = (float)sum;
    }
}
