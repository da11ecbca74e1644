#include "proto.h"

#include "hal.h"
#include "lib.h"

static uint8_t *rx_payload;
static uint32_t rx_capacity;
static uint32_t tx_crc, tx_left;

int proto_init(uint32_t max_payload) {
    rx_payload = hal_alloc(max_payload + PROTO_TRAILER);
    if (!rx_payload) return -1;
    rx_capacity = max_payload;
    return 0;
}

uint32_t proto_max_payload(void) { return rx_capacity; }

static int header_valid(const uint8_t *h) {
    return h[0] == PROTO_MAGIC0 && h[1] == PROTO_MAGIC1 && h[2] == PROTO_VERSION &&
           get_u32(h + 8) <= rx_capacity;
}

void proto_recv(struct frame *f) {
    uint8_t h[PROTO_HEADER];
    uint32_t have = 0;
    for (;;) {
        /* Fill the header window; on a bad header slide it by one byte and look again, so a
         * stray 0xFE in noise cannot hide a frame that starts inside the window. */
        hal_serial_read(h + have, PROTO_HEADER - have);
        have = PROTO_HEADER;
        if (!header_valid(h)) {
            uint32_t skip = 1;
            while (skip < PROTO_HEADER && h[skip] != PROTO_MAGIC0) skip++;
            memmove(h, h + skip, PROTO_HEADER - skip);
            have = PROTO_HEADER - skip;
            continue;
        }
        uint32_t length = get_u32(h + 8);
        hal_serial_read(rx_payload, length + PROTO_TRAILER);
        uint32_t crc = crc32(crc32(0, h, PROTO_HEADER), rx_payload, length);
        uint16_t seq = get_u16(h + 4);
        if (crc != get_u32(rx_payload + length)) {
            proto_error(seq, ERR_CRC, "frame checksum mismatch");
            have = 0;
            continue;
        }
        f->type = h[3];
        f->seq = seq;
        f->length = length;
        f->payload = rx_payload;
        return;
    }
}

void proto_begin(uint8_t type, uint16_t seq, uint32_t length) {
    uint8_t h[PROTO_HEADER] = {PROTO_MAGIC0, PROTO_MAGIC1, PROTO_VERSION, type};
    put_u16(h + 4, seq);
    put_u16(h + 6, 0);
    put_u32(h + 8, length);
    tx_crc = crc32(0, h, PROTO_HEADER);
    tx_left = length;
    hal_serial_write(h, PROTO_HEADER);
}

void proto_write(const void *data, size_t n) {
    tx_crc = crc32(tx_crc, data, n);
    tx_left -= (uint32_t)n;
    hal_serial_write(data, n);
}

void proto_end(void) {
    uint8_t t[PROTO_TRAILER];
    put_u32(t, tx_crc);
    hal_serial_write(t, PROTO_TRAILER);
}

void proto_send(uint8_t type, uint16_t seq, const void *payload, uint32_t length) {
    proto_begin(type, seq, length);
    proto_write(payload, length);
    proto_end();
}

void proto_error(uint16_t seq, uint32_t code, const char *message) {
    uint32_t n = (uint32_t)strlen(message);
    uint8_t c[4];
    put_u32(c, code);
    proto_begin(MSG_ERROR, seq, 4 + n);
    proto_write(c, 4);
    proto_write(message, n);
    proto_end();
}
