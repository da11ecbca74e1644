/*
 * A stack of Dense layers (ReLU between, softmax at the end) trained with sparse categorical
 * cross-entropy, laid out exactly like Keras: kernel (in, out) row-major, then bias (out,), per
 * layer, float32 -- the order of model.get_weights(). SGD, Adam and Nadam follow Keras 3's
 * update rules, with a fresh optimizer per training call (as a freshly compiled Keras model).
 */
#ifndef EDGE_MLP_H
#define EDGE_MLP_H

#include <stdint.h>

#define MLP_MAX_LAYERS 8
#define MLP_MAX_WIDTH 65536

enum optimizer { OPT_SGD = 0, OPT_ADAM = 1, OPT_NADAM = 2 };
#define TRAIN_SHUFFLE 1u

struct mlp {
    uint32_t layers;                     /* number of Dense layers */
    uint32_t sizes[MLP_MAX_LAYERS + 1];  /* sizes[0] = inputs, sizes[layers] = classes */
    uint32_t count;                      /* parameters in total */
    float *params, *grads;               /* count floats each, in get_weights() order */
    float *w[MLP_MAX_LAYERS], *b[MLP_MAX_LAYERS];
    float *gw[MLP_MAX_LAYERS], *gb[MLP_MAX_LAYERS];
};

struct train_params {
    uint32_t epochs, batch_size;
    float learning_rate;
    uint32_t optimizer, seed, flags;
    float beta_1, beta_2, epsilon;
};

struct metrics {
    uint32_t num_examples, steps;
    float loss, accuracy; /* last epoch: mean per-example loss and accuracy, as Keras' history */
    uint32_t train_us, mem_free;
};

/* Sizes the model from a weights blob: u32 layers, u32 sizes[layers+1], then the floats.
 * Returns the blob's expected byte length, or 0 if the header is malformed. */
uint32_t mlp_blob_size(const uint8_t *blob, uint32_t length);
/* Allocates (from the HAL arena) and fills the model; 0 on success, an error code otherwise. */
int mlp_load(struct mlp *m, const uint8_t *blob, uint32_t length);
/* The blob header (4 * (layers + 2) bytes) that precedes the parameters on the wire. */
uint32_t mlp_header(const struct mlp *m, uint8_t *out);
/* Trains on n examples (x: n * sizes[0] floats, y: n labels); scratch comes from the arena and is
 * released afterwards. Returns 0 or an error code from proto.h. */
int mlp_train(struct mlp *m, const float *x, const int32_t *y, uint32_t n, const struct train_params *p,
              struct metrics *out);

#endif
