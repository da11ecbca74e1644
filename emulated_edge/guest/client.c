/*
 * The edge client: announces itself, then serves the host's requests one at a time. Written
 * against hal.h only, so a Zephyr board port reuses it unchanged.
 */
#include "hal.h"
#include "lib.h"
#include "mlp.h"
#include "proto.h"

#define FIRMWARE_VERSION "fedkeeper-edge 1.0"
#define MAX_PAYLOAD (4u << 20) /* weights blobs up to 4 MiB (a 784-256-10 mlp is 0.8 MiB) */
#define MIN_PAYLOAD (64u << 10)

/* ---- the data partition: a 32-byte header, float32 features, int32 labels ---- */
#define PART_MAGIC 0x5044464Bu /* "KFDP" little-endian: bytes 'K' 'F' 'D' 'P' */
#define PART_HEADER 32

enum data_status { DATA_OK = 0, DATA_MISSING = 1, DATA_BAD_FORMAT = 2, DATA_BAD_CRC = 3, DATA_BAD_LABEL = 4 };

static struct {
    uint32_t status, n, features, classes, crc;
    const float *x;
    const int32_t *y;
} data;

static struct mlp model;
static int model_loaded;
static size_t model_mark;

static void load_partition(void) {
    struct hal_blob blob = hal_partition();
    data.status = DATA_MISSING;
    if (!blob.data) return;
    data.status = DATA_BAD_FORMAT;
    if (blob.size < PART_HEADER || get_u32(blob.data) != PART_MAGIC || get_u16(blob.data + 4) != 1 ||
        get_u16(blob.data + 6) != 1)
        return;
    uint32_t n = get_u32(blob.data + 8), f = get_u32(blob.data + 12), c = get_u32(blob.data + 16);
    uint64_t want = PART_HEADER + (uint64_t)n * f * 4 + (uint64_t)n * 4;
    if (n == 0 || f == 0 || c < 2 || want != blob.size) return;
    data.crc = crc32(0, blob.data + PART_HEADER, blob.size - PART_HEADER);
    if (data.crc != get_u32(blob.data + 20)) {
        data.status = DATA_BAD_CRC;
        return;
    }
    data.n = n;
    data.features = f;
    data.classes = c;
    data.x = (const float *)(blob.data + PART_HEADER);
    data.y = (const int32_t *)(blob.data + PART_HEADER + (size_t)n * f * 4);
    for (uint32_t i = 0; i < n; i++)
        if (data.y[i] < 0 || (uint32_t)data.y[i] >= c) {
            data.status = DATA_BAD_LABEL;
            return;
        }
    data.status = DATA_OK;
}

/* ---- HELLO / PONG: the device's status ---- */
#define STATUS_SIZE 64
static void send_status(uint8_t type, uint16_t seq) {
    uint8_t s[STATUS_SIZE];
    memset(s, 0, sizeof s);
    put_u32(s + 0, PROTO_VERSION);
    put_u32(s + 4, hal_device_id());
    put_u32(s + 8, data.status);
    put_u32(s + 12, data.n);
    put_u32(s + 16, data.features);
    put_u32(s + 20, data.classes);
    put_u32(s + 24, data.crc);
    put_u32(s + 28, (uint32_t)hal_mem_free());
    put_u32(s + 32, proto_max_payload());
    put_u32(s + 36, hal_cpu_khz());
    put_u32(s + 40, (uint32_t)udiv64(hal_time_us(), 1000));
    const char *board = hal_board();
    for (int i = 0; i < 20 && board[i]; i++) s[44 + i] = (uint8_t)board[i];
    proto_send(type, seq, s, sizeof s);
}

/* ---- requests ---- */
static void on_load(const struct frame *f) {
    hal_mem_release(model_mark); /* the previous model and its scratch */
    model_loaded = 0;
    int rc = mlp_load(&model, f->payload, f->length);
    if (rc) {
        hal_mem_release(model_mark);
        proto_error(f->seq, (uint32_t)rc, rc == ERR_MEMORY ? "model does not fit in memory"
                                                           : "malformed weights blob");
        return;
    }
    model_loaded = 1;
    uint8_t r[4];
    put_u32(r, model.count);
    proto_send(MSG_LOADED, f->seq, r, 4);
}

static void on_train(const struct frame *f) {
    if (f->length != 36) {
        proto_error(f->seq, ERR_PAYLOAD, "train parameters must be 36 bytes");
        return;
    }
    const uint8_t *q = f->payload;
    struct train_params p = {get_u32(q),      get_u32(q + 4),  get_f32(q + 8),
                             get_u32(q + 12), get_u32(q + 16), get_u32(q + 20),
                             get_f32(q + 24), get_f32(q + 28), get_f32(q + 32)};
    if (!model_loaded) {
        proto_error(f->seq, ERR_NO_MODEL, "no model loaded");
        return;
    }
    if (data.status != DATA_OK) {
        proto_error(f->seq, ERR_NO_DATA, "no valid data partition");
        return;
    }
    if (model.sizes[0] != data.features || model.sizes[model.layers] != data.classes) {
        proto_error(f->seq, ERR_SHAPE, "model inputs/outputs do not match the partition's features/classes");
        return;
    }
    if (p.epochs < 1 || p.batch_size < 1 || p.optimizer > OPT_NADAM || !(p.learning_rate > 0.0f)) {
        proto_error(f->seq, ERR_PAYLOAD, "bad train parameters");
        return;
    }
    struct metrics m;
    int rc = mlp_train(&model, data.x, data.y, data.n, &p, &m);
    if (rc) {
        proto_error(f->seq, (uint32_t)rc, "batch does not fit in memory");
        return;
    }
    uint8_t r[24];
    put_u32(r, m.num_examples);
    put_u32(r + 4, m.steps);
    put_f32(r + 8, m.loss);
    put_f32(r + 12, m.accuracy);
    put_u32(r + 16, m.train_us);
    put_u32(r + 20, m.mem_free);
    proto_send(MSG_TRAINED, f->seq, r, sizeof r);
}

static void on_get_weights(const struct frame *f) {
    if (!model_loaded) {
        proto_error(f->seq, ERR_NO_MODEL, "no model loaded");
        return;
    }
    uint8_t header[4 * (MLP_MAX_LAYERS + 2)];
    uint32_t h = mlp_header(&model, header);
    proto_begin(MSG_WEIGHTS, f->seq, h + 4 * model.count);
    proto_write(header, h);
    proto_write(model.params, 4 * (size_t)model.count);
    proto_end();
}

void client_main(void) {
    static const char banner[] = "\r\n" FIRMWARE_VERSION " booting\r\n";
    hal_serial_write(banner, sizeof banner - 1);
    load_partition();
    uint32_t max_payload = MAX_PAYLOAD;
    while (max_payload > MIN_PAYLOAD && max_payload > hal_mem_free() / 4) max_payload /= 2;
    if (proto_init(max_payload)) {
        static const char oom[] = "edge guest: no memory for the receive buffer\r\n";
        hal_serial_write(oom, sizeof oom - 1);
        hal_serial_flush();
        hal_exit(2);
    }
    model_mark = hal_mem_mark();
    send_status(MSG_HELLO, 0);
    for (;;) {
        struct frame f;
        proto_recv(&f);
        switch (f.type) {
        case MSG_PING:
            send_status(MSG_PONG, f.seq);
            break;
        case MSG_LOAD_WEIGHTS:
            on_load(&f);
            break;
        case MSG_TRAIN:
            on_train(&f);
            break;
        case MSG_GET_WEIGHTS:
            on_get_weights(&f);
            break;
        case MSG_EXIT:
            hal_serial_flush();
            hal_exit(f.length >= 4 ? get_u32(f.payload) : 0);
        default:
            proto_error(f.seq, ERR_TYPE, "unknown message type");
        }
    }
}
