/*
 * The framed serial protocol between the host (fedkeeper/host/edge/protocol.py) and the guest.
 *
 *   offset  size  field
 *   0       2     magic 0xFE 0xED
 *   2       1     protocol version (1)
 *   3       1     message type
 *   4       2     sequence number (a reply echoes its request's)
 *   6       2     flags (0)
 *   8       4     payload length
 *   12      n     payload
 *   12+n    4     CRC-32 (zlib) of bytes 0 .. 12+n-1
 *
 * All integers and floats are little-endian. Bytes outside frames (firmware banners, crash
 * messages) are skipped by the receiver, which re-synchronises on the magic.
 */
#ifndef EDGE_PROTO_H
#define EDGE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC0 0xFE
#define PROTO_MAGIC1 0xED
#define PROTO_VERSION 1
#define PROTO_HEADER 12
#define PROTO_TRAILER 4

enum msg_type {
    MSG_HELLO = 0x01,        /* guest -> host at boot: struct status */
    MSG_PING = 0x02,         /* host -> guest */
    MSG_PONG = 0x03,         /* guest -> host: struct status */
    MSG_LOAD_WEIGHTS = 0x10, /* host -> guest: weights blob */
    MSG_LOADED = 0x11,       /* guest -> host: u32 parameter count */
    MSG_TRAIN = 0x20,        /* host -> guest: struct train_params */
    MSG_TRAINED = 0x21,      /* guest -> host: struct metrics */
    MSG_GET_WEIGHTS = 0x30,  /* host -> guest */
    MSG_WEIGHTS = 0x31,      /* guest -> host: weights blob */
    MSG_EXIT = 0x40,         /* host -> guest: u32 exit code; no reply, the VM powers off */
    MSG_ERROR = 0x7F,        /* guest -> host: u32 error code + UTF-8 message */
};

enum error_code {
    ERR_CRC = 1,      /* frame failed its checksum */
    ERR_TYPE = 2,     /* unknown message type */
    ERR_PAYLOAD = 3,  /* payload malformed or too large */
    ERR_NO_MODEL = 4, /* TRAIN or GET_WEIGHTS before LOAD_WEIGHTS */
    ERR_NO_DATA = 5,  /* no valid data partition */
    ERR_SHAPE = 6,    /* model does not fit the data (features, classes) */
    ERR_MEMORY = 7,   /* the arena cannot hold the model or the batch */
};

struct frame {
    uint8_t type;
    uint16_t seq;
    uint32_t length;
    uint8_t *payload; /* points into the receive buffer */
};

/* Allocates the receive buffer; max_payload bounds what the host may send. */
int proto_init(uint32_t max_payload);
uint32_t proto_max_payload(void);
/* Blocks until a frame with a valid header and checksum arrives. A frame that fails its
 * checksum is answered with ERR_CRC and dropped. */
void proto_recv(struct frame *f);
/* Sends a frame in pieces, so large payloads (weights) stream without a transmit buffer. */
void proto_begin(uint8_t type, uint16_t seq, uint32_t length);
void proto_write(const void *data, size_t n);
void proto_end(void);
void proto_send(uint8_t type, uint16_t seq, const void *payload, uint32_t length);
void proto_error(uint16_t seq, uint32_t code, const char *message);

#endif
