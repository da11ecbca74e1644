/* Helpers the client shares on every board: CRC-32, exp/log/sqrt, 64-bit division, little-endian
 * access. The string routines are declared here and provided by the board (baremetal/string.c, or
 * Zephyr's libc). */
#ifndef EDGE_LIB_H
#define EDGE_LIB_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* zlib-compatible CRC-32 (reflected 0xEDB88320): crc32(0, buf, n) == zlib.crc32(buf). */
uint32_t crc32(uint32_t crc, const void *buf, size_t n);

/* 64-by-32-bit unsigned division without libgcc (two divl steps). */
uint64_t udiv64(uint64_t n, uint32_t d);

/* Double-precision exp/log accurate to about 1e-15 relative; enough for float32 training. */
double k_exp(double x);
double k_log(double x);
double k_pow(double base, double exponent); /* base > 0 */
float k_sqrtf(float x);

/* Little-endian loads/stores for protocol payloads (the wire format is little-endian). */
static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline float get_f32(const uint8_t *p) {
    uint32_t u = get_u32(p);
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
static inline void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void put_f32(uint8_t *p, float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    put_u32(p, u);
}

#endif
