#include "lib.h"

static uint32_t crc_table[256];
static int crc_ready;

uint32_t crc32(uint32_t crc, const void *buf, size_t n) {
    if (!crc_ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
        crc_ready = 1;
    }
    const uint8_t *p = buf;
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint64_t udiv64(uint64_t n, uint32_t d) {
    uint32_t hi = (uint32_t)(n >> 32), lo = (uint32_t)n;
    uint32_t q_hi = hi / d, r = hi % d, q_lo;
    __asm__("divl %2" : "=a"(q_lo), "+d"(r) : "rm"(d), "0"(lo));
    return (uint64_t)q_hi << 32 | q_lo;
}

static const double LN2 = 0.69314718055994530942;

static double scale2(double x, int e) {
    /* x * 2^e for |e| well inside the double range */
    union { double d; uint64_t u; } s;
    s.u = (uint64_t)(e + 1023) << 52;
    return x * s.d;
}

double k_exp(double x) {
    if (x > 709.0) return scale2(1.0, 1023) * 2.0; /* overflow to +inf */
    if (x < -708.0) return 0.0;
    /* x = n ln2 + r, |r| <= ln2/2; Taylor series to degree 13 */
    double t = x * 1.4426950408889634;
    int n = (int)(t < 0 ? t - 0.5 : t + 0.5);
    double r = x - n * LN2;
    double term = 1.0, sum = 1.0;
    for (int k = 1; k <= 13; k++) {
        term *= r / k;
        sum += term;
    }
    return scale2(sum, n);
}

double k_log(double x) {
    if (!(x > 0)) return -scale2(1.0, 1023) * 2.0; /* -inf for 0 and negatives */
    union { double d; uint64_t u; } v = {x};
    int e = (int)((v.u >> 52) & 0x7FF) - 1023;
    v.u = (v.u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull; /* mantissa in [1, 2) */
    double m = v.d;
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e += 1;
    }
    /* log m = 2 atanh s, s = (m-1)/(m+1), |s| <= 0.172 */
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, pow = s, sum = 0.0;
    for (int k = 0; k < 12; k++) {
        sum += pow / (2 * k + 1);
        pow *= s2;
    }
    return 2.0 * sum + e * LN2;
}

double k_pow(double base, double exponent) { return k_exp(exponent * k_log(base)); }

float k_sqrtf(float x) {
    float r;
    __asm__("sqrtss %1, %0" : "=x"(r) : "x"(x));
    return r;
}
