#include "mlp.h"

#include "hal.h"
#include "lib.h"
#include "proto.h"

uint32_t mlp_blob_size(const uint8_t *blob, uint32_t length) {
    if (length < 4) return 0;
    uint32_t layers = get_u32(blob);
    if (layers < 1 || layers > MLP_MAX_LAYERS || length < 4 * (layers + 2)) return 0;
    uint64_t count = 0;
    for (uint32_t l = 0; l < layers; l++) {
        uint32_t in = get_u32(blob + 4 + 4 * l), out = get_u32(blob + 8 + 4 * l);
        if (in < 1 || out < 1 || in > MLP_MAX_WIDTH || out > MLP_MAX_WIDTH) return 0;
        count += (uint64_t)in * out + out;
    }
    uint64_t total = 4 * (layers + 2) + 4 * count;
    return total > 0xFFFFFFFFu ? 0 : (uint32_t)total;
}

int mlp_load(struct mlp *m, const uint8_t *blob, uint32_t length) {
    uint32_t expect = mlp_blob_size(blob, length);
    if (!expect || expect != length) return ERR_PAYLOAD;
    m->layers = get_u32(blob);
    for (uint32_t l = 0; l <= m->layers; l++) m->sizes[l] = get_u32(blob + 4 + 4 * l);
    uint32_t header = 4 * (m->layers + 2);
    m->count = (length - header) / 4;
    m->params = hal_alloc(4 * (size_t)m->count);
    m->grads = hal_alloc(4 * (size_t)m->count);
    if (!m->params || !m->grads) return ERR_MEMORY;
    memcpy(m->params, blob + header, 4 * (size_t)m->count);
    float *p = m->params, *g = m->grads;
    for (uint32_t l = 0; l < m->layers; l++) {
        uint32_t in = m->sizes[l], out = m->sizes[l + 1];
        m->w[l] = p;
        m->gw[l] = g;
        p += in * out;
        g += in * out;
        m->b[l] = p;
        m->gb[l] = g;
        p += out;
        g += out;
    }
    return 0;
}

uint32_t mlp_header(const struct mlp *m, uint8_t *out) {
    put_u32(out, m->layers);
    for (uint32_t l = 0; l <= m->layers; l++) put_u32(out + 4 + 4 * l, m->sizes[l]);
    return 4 * (m->layers + 2);
}

/* out (rows x O) = in (rows x I) . W (I x O) + b. Rows of zeros in `in` are common (ReLU, blank
 * pixels) and skipped: adding 0 * w changes nothing. */
static void dense_forward(const float *in, uint32_t rows, uint32_t I, uint32_t O, const float *W,
                          const float *b, float *out) {
    for (uint32_t r = 0; r < rows; r++) {
        float *o = out + (size_t)r * O;
        const float *a = in + (size_t)r * I;
        for (uint32_t j = 0; j < O; j++) o[j] = b[j];
        for (uint32_t i = 0; i < I; i++) {
            float s = a[i];
            if (s == 0.0f) continue;
            const float *w = W + (size_t)i * O;
            for (uint32_t j = 0; j < O; j++) o[j] += s * w[j];
        }
    }
}

static uint32_t xorshift32(uint32_t *state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

static void optimizer_step(struct mlp *m, const struct train_params *p, float *mom, float *vel,
                           uint32_t step, double *u_product) {
    float *w = m->params, *g = m->grads;
    uint32_t n = m->count;
    if (p->optimizer == OPT_SGD) {
        float lr = p->learning_rate;
        for (uint32_t i = 0; i < n; i++) w[i] -= lr * g[i];
        return;
    }
    float b1 = p->beta_1, b2 = p->beta_2, eps = p->epsilon;
    if (p->optimizer == OPT_ADAM) {
        double b1p = k_pow(b1, step), b2p = k_pow(b2, step);
        float alpha = (float)(p->learning_rate * __builtin_sqrt(1.0 - b2p) / (1.0 - b1p));
        for (uint32_t i = 0; i < n; i++) {
            mom[i] += (g[i] - mom[i]) * (1.0f - b1);
            vel[i] += (g[i] * g[i] - vel[i]) * (1.0f - b2);
            w[i] -= (mom[i] * alpha) / (k_sqrtf(vel[i]) + eps);
        }
        return;
    }
    /* Nadam (Keras 3): the momentum schedule u_t = beta_1 (1 - 0.5 * 0.96^t). */
    double u_t = b1 * (1.0 - 0.5 * k_pow(0.96, step));
    double u_t1 = b1 * (1.0 - 0.5 * k_pow(0.96, step + 1));
    *u_product *= u_t;
    float c_m = (float)(u_t1 / (1.0 - *u_product * u_t1));
    float c_g = (float)((1.0 - u_t) / (1.0 - *u_product));
    float c_v = (float)(1.0 / (1.0 - k_pow(b2, step)));
    float lr = p->learning_rate;
    for (uint32_t i = 0; i < n; i++) {
        mom[i] += (g[i] - mom[i]) * (1.0f - b1);
        vel[i] += (g[i] * g[i] - vel[i]) * (1.0f - b2);
        float m_hat = c_m * mom[i] + c_g * g[i];
        w[i] -= (m_hat * lr) / (k_sqrtf(vel[i] * c_v) + eps);
    }
}

int mlp_train(struct mlp *m, const float *x, const int32_t *y, uint32_t n, const struct train_params *p,
              struct metrics *out) {
    uint32_t L = m->layers, B = p->batch_size < n ? p->batch_size : n, widest = 0;
    for (uint32_t l = 0; l <= L; l++)
        if (m->sizes[l] > widest) widest = m->sizes[l];
    size_t mark = hal_mem_mark();
    int rc = 0;
    /* Scratch: activations of every layer (a[0] = the gathered batch), two delta buffers, the
     * shuffled order, and the optimizer's slots. */
    float *act[MLP_MAX_LAYERS + 1];
    for (uint32_t l = 0; l <= L; l++) act[l] = hal_alloc(4 * (size_t)B * m->sizes[l]);
    float *delta = hal_alloc(4 * (size_t)B * widest), *delta_prev = hal_alloc(4 * (size_t)B * widest);
    uint32_t *order = hal_alloc(4 * (size_t)n);
    float *mom = NULL, *vel = NULL;
    if (p->optimizer != OPT_SGD) {
        mom = hal_alloc(4 * (size_t)m->count);
        vel = hal_alloc(4 * (size_t)m->count);
        if (mom && vel) {
            memset(mom, 0, 4 * (size_t)m->count);
            memset(vel, 0, 4 * (size_t)m->count);
        }
    }
    int missing = !delta || !delta_prev || !order || (p->optimizer != OPT_SGD && (!mom || !vel));
    for (uint32_t l = 0; l <= L; l++) missing |= !act[l];
    if (missing) {
        rc = ERR_MEMORY;
        goto done;
    }

    uint64_t t0 = hal_time_us();
    uint32_t rng = p->seed ^ 0x9E3779B9u, step = 0, I = m->sizes[0], C = m->sizes[L];
    if (!rng) rng = 1;
    double u_product = 1.0, loss_sum = 0.0;
    uint32_t correct = 0;
    for (uint32_t epoch = 0; epoch < p->epochs; epoch++) {
        for (uint32_t i = 0; i < n; i++) order[i] = i;
        if (p->flags & TRAIN_SHUFFLE) {
            for (uint32_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
                uint32_t j = xorshift32(&rng) % (i + 1), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        loss_sum = 0.0;
        correct = 0;
        for (uint32_t start = 0; start < n; start += B) {
            uint32_t rows = n - start < B ? n - start : B;
            for (uint32_t r = 0; r < rows; r++)
                memcpy(act[0] + (size_t)r * I, x + (size_t)order[start + r] * I, 4 * (size_t)I);
            /* forward */
            for (uint32_t l = 0; l < L; l++) {
                uint32_t in = m->sizes[l], o = m->sizes[l + 1];
                dense_forward(act[l], rows, in, o, m->w[l], m->b[l], act[l + 1]);
                if (l + 1 < L)
                    for (size_t k = 0; k < (size_t)rows * o; k++)
                        if (act[l + 1][k] < 0.0f) act[l + 1][k] = 0.0f;
            }
            /* softmax + cross-entropy on the logits, gradient (p - onehot) / rows */
            float inv_rows = 1.0f / (float)rows;
            for (uint32_t r = 0; r < rows; r++) {
                float *z = act[L] + (size_t)r * C, *d = delta + (size_t)r * C;
                uint32_t label = (uint32_t)y[order[start + r]], best = 0;
                float zmax = z[0];
                for (uint32_t j = 1; j < C; j++)
                    if (z[j] > zmax) zmax = z[j], best = j;
                correct += best == label;
                double sum = 0.0;
                for (uint32_t j = 0; j < C; j++) {
                    double e = k_exp((double)z[j] - zmax);
                    d[j] = (float)e;
                    sum += e;
                }
                loss_sum += k_log(sum) - ((double)z[label] - zmax);
                for (uint32_t j = 0; j < C; j++) {
                    float prob = (float)(d[j] / sum);
                    z[j] = prob;
                    d[j] = (prob - (j == label ? 1.0f : 0.0f)) * inv_rows;
                }
            }
            /* backward */
            memset(m->grads, 0, 4 * (size_t)m->count);
            for (uint32_t l = L; l-- > 0;) {
                uint32_t in = m->sizes[l], o = m->sizes[l + 1];
                float *gw = m->gw[l], *gb = m->gb[l];
                const float *W = m->w[l];
                for (uint32_t r = 0; r < rows; r++) {
                    const float *a = act[l] + (size_t)r * in, *d = delta + (size_t)r * o;
                    for (uint32_t j = 0; j < o; j++) gb[j] += d[j];
                    for (uint32_t i = 0; i < in; i++) {
                        float s = a[i];
                        if (s == 0.0f) continue;
                        float *g = gw + (size_t)i * o;
                        for (uint32_t j = 0; j < o; j++) g[j] += s * d[j];
                    }
                    if (l > 0) { /* through W (before the update) and the ReLU of layer l-1 */
                        float *dp = delta_prev + (size_t)r * in;
                        for (uint32_t i = 0; i < in; i++) {
                            if (a[i] <= 0.0f) {
                                dp[i] = 0.0f;
                                continue;
                            }
                            const float *w = W + (size_t)i * o;
                            float s = 0.0f;
                            for (uint32_t j = 0; j < o; j++) s += d[j] * w[j];
                            dp[i] = s;
                        }
                    }
                }
                float *t = delta;
                delta = delta_prev;
                delta_prev = t;
            }
            optimizer_step(m, p, mom, vel, ++step, &u_product);
        }
    }
    out->num_examples = n;
    out->steps = step;
    out->loss = (float)(loss_sum / n);
    out->accuracy = (float)correct / (float)n;
    out->train_us = (uint32_t)(hal_time_us() - t0);
done:
    hal_mem_release(mark);
    out->mem_free = (uint32_t)hal_mem_free();
    return rc;
}
