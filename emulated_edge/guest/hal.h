/*
 * The hardware abstraction the edge client is written against. hal_x86.c implements it for a
 * multiboot i386 PC (16550 UART, 8259 PIC, PIT/TSC, isa-debug-exit); a Zephyr board port
 * implements the same functions over Zephyr's UART, k_uptime and heap APIs and reuses
 * client.c, proto.c, mlp.c and lib.c unchanged.
 */
#ifndef EDGE_HAL_H
#define EDGE_HAL_H

#include <stddef.h>
#include <stdint.h>

/* ---- serial: a reliable byte stream to the host ---- */
/* Blocks (idling the CPU, never spinning) until all n bytes are queued for transmission. */
void hal_serial_write(const void *buf, size_t n);
/* Blocks, idling, until every queued byte has left the UART. */
void hal_serial_flush(void);
/* Blocks, idling, until n bytes have arrived. */
void hal_serial_read(void *buf, size_t n);

/* ---- time ---- */
uint64_t hal_time_us(void); /* monotonic microseconds since boot */
uint32_t hal_cpu_khz(void); /* calibrated CPU clock, 0 if unknown */

/* ---- memory: a bump arena with mark/release (no free list, no fragmentation) ---- */
void *hal_alloc(size_t n);  /* 16-byte aligned; NULL when the arena is exhausted */
size_t hal_mem_mark(void);
void hal_mem_release(size_t mark); /* frees everything allocated after the mark */
size_t hal_mem_free(void);

/* ---- board ---- */
struct hal_blob {
    const uint8_t *data;
    size_t size;
};
/* The device's data partition (a multiboot module on x86); data is NULL when there is none. */
struct hal_blob hal_partition(void);
uint32_t hal_device_id(void); /* from the boot command line "id=N" */
const char *hal_board(void);
__attribute__((noreturn)) void hal_exit(uint32_t code);

/* The portable entry point, called by the board once the HAL is up. */
__attribute__((noreturn)) void client_main(void);

#endif
