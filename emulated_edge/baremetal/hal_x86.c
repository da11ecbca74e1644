/*
 * HAL for a multiboot i386 PC as QEMU emulates it: COM1 16550 UART driven by IRQ4 through a
 * remapped 8259 PIC, TSC time calibrated against PIT channel 2, a bump arena above the kernel and
 * its modules, and isa-debug-exit (port 0xf4) to power off with a status.
 *
 * The CPU idles in `hlt` whenever it waits for the UART: an idle device costs the host nothing.
 */
#include "hal.h"
#include "lib.h"

#define COM1 0x3F8
#define UART_RBR 0 /* receive buffer (read) / transmit holding (write) */
#define UART_IER 1
#define UART_IIR 2 /* interrupt identification (read) / FIFO control (write) */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define IER_RDI 0x01  /* received data available (and FIFO time-out) */
#define IER_THRI 0x02 /* transmit holding register empty */
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define UART_FIFO 16

#define PIC1 0x20
#define PIC2 0xA0
#define IRQ_BASE 32
#define IRQ_COM1 4

#define DEBUG_EXIT_PORT 0xF4
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* `sti; hlt` is atomic with respect to interrupts (sti takes effect after the next instruction), so
 * an interrupt that arrives between the check and the halt still wakes us: no lost wake-ups. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

/* ------------------------------------------------------------------ polled output (fatal paths) */
static void polled_puts(const char *s) {
    for (; *s; s++) {
        while (!(inb(COM1 + UART_LSR) & LSR_THRE)) {
        }
        outb(COM1 + UART_RBR, (uint8_t)*s);
    }
}

static void polled_hex(uint32_t v) {
    char buf[11] = "0x";
    for (int i = 0; i < 8; i++) buf[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 0xF];
    buf[10] = 0;
    polled_puts(buf);
}

__attribute__((noreturn)) void hal_exit(uint32_t code) {
    cli();
    /* QEMU's isa-debug-exit terminates with status (code << 1) | 1. */
    outb(DEBUG_EXIT_PORT, (uint8_t)code);
    for (;;) __asm__ volatile("hlt");
}

/* ------------------------------------------------------------------ IDT and PIC */
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));
struct idt_ptr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));
struct isr_frame {
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax; /* pusha */
    uint32_t vector, error, eip, cs, eflags;
};

extern const uint32_t isr_table[48];
static struct idt_entry idt[48];

static void idt_init(void) {
    for (int i = 0; i < 48; i++) {
        idt[i].off_lo = (uint16_t)isr_table[i];
        idt[i].off_hi = (uint16_t)(isr_table[i] >> 16);
        idt[i].sel = 0x08;
        idt[i].zero = 0;
        idt[i].type = 0x8E; /* present, ring 0, 32-bit interrupt gate (IF cleared on entry) */
    }
    struct idt_ptr p = {sizeof idt - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(p));
}

static void pic_init(void) {
    outb(PIC1, 0x11); /* ICW1: init, expect ICW4 */
    outb(PIC2, 0x11);
    outb(PIC1 + 1, IRQ_BASE); /* ICW2: vector offsets, away from CPU exceptions */
    outb(PIC2 + 1, IRQ_BASE + 8);
    outb(PIC1 + 1, 0x04); /* ICW3: slave on IRQ2 */
    outb(PIC2 + 1, 0x02);
    outb(PIC1 + 1, 0x01); /* ICW4: 8086 mode */
    outb(PIC2 + 1, 0x01);
    outb(PIC1 + 1, (uint8_t)~(1u << IRQ_COM1)); /* only the UART may interrupt: no timer ticks */
    outb(PIC2 + 1, 0xFF);
}

/* ------------------------------------------------------------------ interrupt-driven UART */
#define RX_SIZE 32768u /* powers of two: indices wrap with a mask */
#define TX_SIZE 4096u
static uint8_t rx_buf[RX_SIZE], tx_buf[TX_SIZE];
static volatile uint32_t rx_head, rx_tail, tx_head, tx_tail; /* head: producer, tail: consumer */
static volatile uint8_t ier_shadow;
static volatile int rx_paused, tx_idle = 1;

static void uart_set_ier(uint8_t v) {
    ier_shadow = v;
    outb(COM1 + UART_IER, v);
}

static void uart_init(void) {
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_LCR, 0x80); /* DLAB */
    outb(COM1 + 0, 1);           /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0);
    outb(COM1 + UART_LCR, 0x03); /* 8N1 */
    outb(COM1 + UART_IIR, 0xC7); /* FIFO on, cleared, RX trigger at 14 bytes (time-out IRQ for the rest) */
    outb(COM1 + UART_MCR, 0x0B); /* DTR, RTS, OUT2 (routes the UART interrupt to the PIC) */
    (void)inb(COM1 + UART_LSR);
    (void)inb(COM1 + UART_RBR);
    uart_set_ier(IER_RDI);
}

static void uart_isr(void) {
    uint8_t iir;
    while (!((iir = inb(COM1 + UART_IIR)) & 1)) {
        switch (iir & 0x0E) {
        case 0x04: /* received data */
        case 0x0C: /* FIFO time-out */
            while (inb(COM1 + UART_LSR) & LSR_DR) {
                if (rx_head - rx_tail == RX_SIZE) {
                    /* Ring full: stop taking bytes. The UART FIFO fills, QEMU stops reading the
                     * pipe, and the host's writes block: end-to-end flow control for free. */
                    rx_paused = 1;
                    uart_set_ier(ier_shadow & (uint8_t)~IER_RDI);
                    break;
                }
                rx_buf[rx_head % RX_SIZE] = inb(COM1 + UART_RBR);
                rx_head++;
            }
            break;
        case 0x02: /* transmitter empty */
            if (tx_head == tx_tail) {
                uart_set_ier(ier_shadow & (uint8_t)~IER_THRI);
                tx_idle = 1;
            } else {
                for (int i = 0; i < UART_FIFO && tx_tail != tx_head; i++) {
                    outb(COM1 + UART_RBR, tx_buf[tx_tail % TX_SIZE]);
                    tx_tail++;
                }
            }
            break;
        case 0x06:
            (void)inb(COM1 + UART_LSR);
            break;
        default:
            (void)inb(COM1 + UART_MSR);
            break;
        }
    }
}

void hal_serial_write(const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        cli();
        while (tx_head - tx_tail == TX_SIZE) sti_hlt(), cli();
        while (n && tx_head - tx_tail < TX_SIZE) {
            tx_buf[tx_head % TX_SIZE] = *p++;
            tx_head++;
            n--;
        }
        if (!(ier_shadow & IER_THRI)) {
            tx_idle = 0;
            uart_set_ier(ier_shadow | IER_THRI); /* raises a THRE interrupt at once if THR is empty */
        }
        sti();
    }
}

void hal_serial_flush(void) {
    cli();
    while (!tx_idle) sti_hlt(), cli();
    sti();
}

void hal_serial_read(void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        cli();
        while (rx_head == rx_tail) {
            if (rx_paused) {
                rx_paused = 0;
                uart_set_ier(ier_shadow | IER_RDI);
            }
            sti_hlt();
            cli();
        }
        while (n && rx_tail != rx_head) {
            *p++ = rx_buf[rx_tail % RX_SIZE];
            rx_tail++;
            n--;
        }
        if (rx_paused && rx_head - rx_tail <= RX_SIZE / 2) {
            rx_paused = 0;
            uart_set_ier(ier_shadow | IER_RDI);
        }
        sti();
    }
}

/* ------------------------------------------------------------------ exceptions and IRQs */
static const char *const exception_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound", "invalid opcode", "no FPU",
    "double fault", "coprocessor", "invalid TSS", "segment not present", "stack fault",
    "general protection", "page fault", "reserved", "x87 FP", "alignment check", "machine check",
    "SIMD FP", "virtualization", "control protection", "reserved", "reserved", "reserved", "reserved",
    "reserved", "reserved", "reserved", "reserved", "security", "reserved"};

void isr_dispatch(struct isr_frame *f);
void isr_dispatch(struct isr_frame *f) {
    if (f->vector < 32) {
        /* A crashed guest says why in plain text (the host logs non-frame bytes) and powers off
         * with status 3 << 1 | 1 = 7; the host restarts it. */
        polled_puts("\r\nedge guest: CPU exception ");
        polled_puts(exception_names[f->vector]);
        polled_puts(" at eip ");
        polled_hex(f->eip);
        polled_puts(" error ");
        polled_hex(f->error);
        polled_puts("\r\n");
        hal_exit(3);
    }
    uint32_t irq = f->vector - IRQ_BASE;
    if (irq == 7 || irq == 15) {
        /* Spurious IRQ: the PIC's in-service register has no bit for it, so no EOI (except the
         * cascade EOI to the master for a spurious slave IRQ). */
        uint16_t pic = irq == 7 ? PIC1 : PIC2;
        outb(pic, 0x0B);
        if (!(inb(pic) & 0x80)) {
            if (irq == 15) outb(PIC1, 0x20);
            return;
        }
    }
    if (irq == IRQ_COM1) uart_isr();
    if (irq >= 8) outb(PIC2, 0x20);
    outb(PIC1, 0x20);
}

/* ------------------------------------------------------------------ time */
static uint64_t tsc_boot;
static uint32_t tsc_khz;

static void tsc_calibrate(void) {
    /* PIT channel 2 in one-shot mode counts 11932 ticks of 1.193182 MHz = 10 ms; OUT2 (port 0x61
     * bit 5) rises when it reaches zero. A 10 ms poll at boot is the only busy wait. */
    const uint16_t ticks = 11932;
    outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
    outb(0x43, 0xB0);                                  /* channel 2, lo/hi byte, mode 0 */
    outb(0x42, ticks & 0xFF);
    outb(0x42, ticks >> 8);
    uint64_t t0 = rdtsc();
    while (!(inb(0x61) & 0x20)) {
    }
    uint64_t dt = rdtsc() - t0;
    tsc_khz = (uint32_t)udiv64(dt, 10);
    if (tsc_khz == 0) tsc_khz = 1;
}

uint64_t hal_time_us(void) { return udiv64((rdtsc() - tsc_boot) * 1000u, tsc_khz); }
uint32_t hal_cpu_khz(void) { return tsc_khz; }

/* ------------------------------------------------------------------ memory */
static uintptr_t heap_base, heap_top, heap_end;

void *hal_alloc(size_t n) {
    uintptr_t p = (heap_top + 15) & ~(uintptr_t)15;
    if (n > heap_end - p) return NULL;
    heap_top = p + n;
    return (void *)p;
}
size_t hal_mem_mark(void) { return heap_top; }
void hal_mem_release(size_t mark) {
    if (mark >= heap_base && mark <= heap_top) heap_top = mark;
}
size_t hal_mem_free(void) { return heap_end - heap_top; }

/* ------------------------------------------------------------------ board */
struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
};
struct multiboot_module {
    uint32_t start, end, string, reserved;
};

static struct hal_blob partition;
static uint32_t device_id;

struct hal_blob hal_partition(void) { return partition; }
uint32_t hal_device_id(void) { return device_id; }
const char *hal_board(void) { return "x86-multiboot"; }

static uint32_t parse_id(const char *cmdline) {
    /* "…/guest.elf id=12 …" */
    for (const char *p = cmdline; *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && p[0] == 'i' && p[1] == 'd' && p[2] == '=') {
            uint32_t v = 0;
            for (p += 3; *p >= '0' && *p <= '9'; p++) v = v * 10 + (uint32_t)(*p - '0');
            return v;
        }
    }
    return 0;
}

extern char _end[];

void kmain(uint32_t magic, const struct multiboot_info *mbi);
void kmain(uint32_t magic, const struct multiboot_info *mbi) {
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        polled_puts("edge guest: not loaded by a multiboot loader\r\n");
        hal_exit(4);
    }
    uintptr_t low = (uintptr_t)_end;
    if (mbi->flags & (1u << 2)) {
        const char *cmdline = (const char *)mbi->cmdline;
        device_id = parse_id(cmdline);
        uintptr_t e = (uintptr_t)cmdline + strlen(cmdline) + 1;
        if (e > low) low = e;
    }
    if ((mbi->flags & (1u << 3)) && mbi->mods_count > 0) {
        const struct multiboot_module *mods = (const struct multiboot_module *)mbi->mods_addr;
        partition.data = (const uint8_t *)mods[0].start;
        partition.size = mods[0].end - mods[0].start;
        for (uint32_t i = 0; i < mbi->mods_count; i++) {
            if (mods[i].end > low) low = mods[i].end;
            if ((uintptr_t)(mods + i + 1) > low) low = (uintptr_t)(mods + i + 1);
        }
    }
    heap_base = heap_top = (low + 4095) & ~(uintptr_t)4095;
    heap_end = 0x100000 + (uintptr_t)((mbi->flags & 1) ? mbi->mem_upper : 1024) * 1024;
    if (heap_end < heap_base) heap_end = heap_base;

    pic_init();
    idt_init();
    uart_init();
    tsc_calibrate();
    tsc_boot = rdtsc();
    sti();
    client_main();
}
