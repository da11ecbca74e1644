/*
 * HAL for Zephyr RTOS on the qemu_x86 board: the same client (../guest) over Zephyr's services.
 *
 *   serial     COM1 through Zephyr's interrupt-driven UART API, with RX/TX ring buffers and
 *              semaphores: the main thread sleeps (the idle thread halts the CPU) while it waits
 *   time       the kernel's uptime in ticks (1 MHz ticks, tickless: no periodic interrupt)
 *   memory     a k_heap over the RAM the kernel image does not use (mapped with z_phys_map), sized by
 *              QEMU's -m; allocations stack up, so mark/release frees everything above a mark
 *   partition  the multiboot module QEMU loads from -initrd, mapped read-only
 *   device id  "id=N" on the multiboot command line (-append)
 *   exit       isa-debug-exit (port 0xf4): QEMU ends with status code << 1 | 1
 *
 * Nothing here zeroes or copies the heap or the partition, so QEMU allocates host memory only for
 * the pages a job really touches.
 */
/* kernel.h first: multiboot.h uses __packed without including the toolchain header that defines it */
#include <zephyr/kernel.h>

#include <zephyr/arch/x86/multiboot.h>
#include <zephyr/drivers/uart.h>
#include <zephyr/fatal.h>
#include <zephyr/linker/linker-defs.h>
#include <zephyr/sys/mem_manage.h>
#include <zephyr/sys/printk.h>
#include <zephyr/sys/ring_buffer.h>

#include "hal.h"
#include "lib.h"

#define DEBUG_EXIT_PORT 0xF4
#define EXIT_FATAL 3 /* QEMU status 7, as the bare-metal guest on a CPU exception */
#define PAGE CONFIG_MMU_PAGE_SIZE
#define ALIGN_UP(x) (((x) + PAGE - 1) & ~(uintptr_t)(PAGE - 1))

/* The multiboot fields Zephyr's struct leaves unnamed (multiboot spec 3.3: boot_device, cmdline,
 * mods_count, mods_addr follow mem_upper). */
#define MB_FLAG_CMDLINE BIT(2)
#define MB_FLAG_MODS BIT(3)
#define MB_CMDLINE 1
#define MB_MODS_COUNT 2
#define MB_MODS_ADDR 3

struct mb_module {
    uint32_t start, end, string, reserved;
};

/* The kernel image is linked where it runs: virtual addresses equal physical ones. */
BUILD_ASSERT(CONFIG_KERNEL_VM_BASE + CONFIG_KERNEL_VM_OFFSET == CONFIG_SRAM_BASE_ADDRESS + CONFIG_SRAM_OFFSET,
             "the HAL reads the image's physical end from its virtual one");

static const struct device *const uart = DEVICE_DT_GET(DT_CHOSEN(zephyr_console));

/* ------------------------------------------------------------------ exit and fatal errors */
__attribute__((noreturn)) void hal_exit(uint32_t code) {
    (void)irq_lock();
    sys_out8((uint8_t)code, DEBUG_EXIT_PORT);
    for (;;) {
        k_cpu_idle();
    }
}

/* A crash says why in plain text (the host logs bytes outside frames) and powers off; the fleet
 * restarts the guest. Overrides Zephyr's default handler, which would halt and leave QEMU running. */
void k_sys_fatal_error_handler(unsigned int reason, const z_arch_esf_t *esf) {
    ARG_UNUSED(esf);
    printk("\r\nedge guest: Zephyr fatal error %u\r\n", reason);
    hal_exit(EXIT_FATAL);
}

/* ------------------------------------------------------------------ interrupt-driven UART */
#define RX_SIZE 32768
#define TX_SIZE 8192
RING_BUF_DECLARE(rx_ring, RX_SIZE);
RING_BUF_DECLARE(tx_ring, TX_SIZE);
/* A waiting thread says how much it waits for (bytes in rx_ring, free space in tx_ring, or for the
 * transmitter to go idle) and sleeps on the semaphore; the ISR wakes it only once that much is there,
 * not for every 14-byte FIFO load, so a 1 MB weights blob costs a few hundred wake-ups, not 70 000.
 * The semaphores are flags (limit 1): a waiter re-checks its ring after every wake-up. */
static K_SEM_DEFINE(rx_sem, 0, 1);
static K_SEM_DEFINE(tx_sem, 0, 1);
static volatile uint32_t rx_want, tx_want;
static volatile bool rx_paused, tx_busy, flush_wait;

static void uart_isr(const struct device *dev, void *user_data) {
    ARG_UNUSED(user_data);
    while (uart_irq_update(dev) && uart_irq_is_pending(dev)) {
        if (uart_irq_rx_ready(dev)) {
            uint8_t *p;
            uint32_t room = ring_buf_put_claim(&rx_ring, &p, RX_SIZE);
            if (room == 0) {
                /* Ring full: stop taking bytes. The UART FIFO fills, QEMU stops reading the pipe,
                 * and the host's writes wait: flow control end to end. */
                rx_paused = true;
                uart_irq_rx_disable(dev);
            } else {
                ring_buf_put_finish(&rx_ring, (uint32_t)uart_fifo_read(dev, p, (int)room));
            }
            if (rx_want && ring_buf_size_get(&rx_ring) >= rx_want) {
                rx_want = 0;
                k_sem_give(&rx_sem);
            }
        }
        if (uart_irq_tx_ready(dev)) {
            uint8_t *p;
            uint32_t n = ring_buf_get_claim(&tx_ring, &p, TX_SIZE);
            if (n == 0) {
                uart_irq_tx_disable(dev);
                tx_busy = false;
            } else {
                ring_buf_get_finish(&tx_ring, (uint32_t)uart_fifo_fill(dev, p, (int)n));
            }
            if ((tx_want && ring_buf_space_get(&tx_ring) >= tx_want) || (flush_wait && !tx_busy)) {
                tx_want = 0;
                flush_wait = false;
                k_sem_give(&tx_sem);
            }
        }
    }
}

void hal_serial_write(const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        unsigned int key = irq_lock();
        uint32_t put = ring_buf_put(&tx_ring, p, (uint32_t)n);
        if (put) {
            tx_busy = true;
            uart_irq_tx_enable(uart); /* a THRE interrupt follows at once if the UART is idle */
        }
        p += put;
        n -= put;
        if (n) {
            tx_want = MIN(n, TX_SIZE / 2);
        }
        irq_unlock(key);
        if (n) {
            k_sem_take(&tx_sem, K_FOREVER);
        }
    }
}

void hal_serial_flush(void) {
    for (;;) {
        unsigned int key = irq_lock();
        bool busy = tx_busy;
        flush_wait = busy;
        irq_unlock(key);
        if (!busy) {
            return;
        }
        k_sem_take(&tx_sem, K_FOREVER);
    }
}

void hal_serial_read(void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        unsigned int key = irq_lock();
        uint32_t got = ring_buf_get(&rx_ring, p, (uint32_t)n);
        if (rx_paused && ring_buf_space_get(&rx_ring) >= RX_SIZE / 2) {
            rx_paused = false;
            uart_irq_rx_enable(uart);
        }
        p += got;
        n -= got;
        if (n) {
            rx_want = MIN(n, RX_SIZE / 2); /* the ring is empty now: got took all there was */
        }
        irq_unlock(key);
        if (n) {
            k_sem_take(&rx_sem, K_FOREVER);
        }
    }
}

/* ------------------------------------------------------------------ time */
uint64_t hal_time_us(void) { return k_ticks_to_us_floor64((uint64_t)k_uptime_ticks()); }
/* The CPU clock is not calibrated on this board (the bare-metal guest times the TSC at boot). */
uint32_t hal_cpu_khz(void) { return 0; }

/* ------------------------------------------------------------------ memory: a stack of k_heap blocks */
#define MAX_BLOCKS 64 /* the client holds at most a dozen at once (buffer, model, a job's scratch) */
static struct k_heap heap;
static size_t heap_size;
static void *blocks[MAX_BLOCKS];
static size_t depth;

void *hal_alloc(size_t n) {
    if (depth == MAX_BLOCKS || heap_size == 0) {
        return NULL;
    }
    void *p = k_heap_aligned_alloc(&heap, 16, n ? n : 1, K_NO_WAIT);
    if (p) {
        blocks[depth++] = p;
    }
    return p;
}

size_t hal_mem_mark(void) { return depth; }

void hal_mem_release(size_t mark) {
    while (depth > mark) {
        k_heap_free(&heap, blocks[--depth]);
    }
}

size_t hal_mem_free(void) {
    struct sys_memory_stats stats;
    if (heap_size == 0 || sys_heap_runtime_stats_get(&heap.heap, &stats)) {
        return 0;
    }
    return stats.free_bytes;
}

/* ------------------------------------------------------------------ board */
static struct hal_blob partition;
static uint32_t device_id;

struct hal_blob hal_partition(void) { return partition; }
uint32_t hal_device_id(void) { return device_id; }
const char *hal_board(void) { return "zephyr-" CONFIG_BOARD; }

static void *map(uintptr_t phys, size_t size, uint32_t perm) {
    uint8_t *virt;
    z_phys_map(&virt, phys, size, K_MEM_CACHE_WB | perm);
    return virt;
}

static uint32_t parse_id(const char *cmdline, size_t n) {
    /* "…/zephyr.elf id=12 …" */
    for (size_t i = 0; i + 3 < n && cmdline[i]; i++) {
        if ((i == 0 || cmdline[i - 1] == ' ') && cmdline[i] == 'i' && cmdline[i + 1] == 'd' &&
            cmdline[i + 2] == '=') {
            uint32_t v = 0;
            for (i += 3; i < n && cmdline[i] >= '0' && cmdline[i] <= '9'; i++) {
                v = v * 10 + (uint32_t)(cmdline[i] - '0');
            }
            return v;
        }
    }
    return 0;
}

/* Reads the command line and the module QEMU's multiboot loader placed after the kernel, then makes
 * the RAM above all of them (up to what -m gave and the kernel's address space can map) the heap. */
static void board_init(void) {
    const struct multiboot_info *mb = &multiboot_info;
    uintptr_t low = ALIGN_UP((uintptr_t)z_mapped_end);
    if (mb->flags & MB_FLAG_CMDLINE) {
        uintptr_t phys = mb->unused0[MB_CMDLINE];
        size_t span = 2 * PAGE - (phys & (PAGE - 1)); /* "PATH id=N": at least a page of it */
        device_id = parse_id(map(phys, span, 0), span);
        low = MAX(low, ALIGN_UP(phys + span));
    }
    if ((mb->flags & MB_FLAG_MODS) && mb->unused0[MB_MODS_COUNT] > 0) {
        uint32_t count = mb->unused0[MB_MODS_COUNT];
        uintptr_t table = mb->unused0[MB_MODS_ADDR];
        const struct mb_module *mods = map(table, count * sizeof(struct mb_module), 0);
        if (mods[0].end > mods[0].start) {
            partition.size = mods[0].end - mods[0].start;
            partition.data = map(mods[0].start, partition.size, 0);
        }
        low = MAX(low, ALIGN_UP(table + count * sizeof(struct mb_module)));
        for (uint32_t i = 0; i < count; i++) {
            low = MAX(low, ALIGN_UP(mods[i].end));
        }
    }
    uintptr_t ram_end = (mb->flags & MULTIBOOT_INFO_FLAGS_MEM) ? 0x100000 + (uintptr_t)mb->mem_upper * 1024 : 0;
    /* The heap needs virtual space too: what the address space (CONFIG_KERNEL_VM_SIZE) has left after
     * the image and the mappings above, less a page table's span of slack. */
    uintptr_t mapped = ALIGN_UP((uintptr_t)z_mapped_end) - CONFIG_KERNEL_VM_BASE + ALIGN_UP(partition.size) +
                       4 * PAGE + MB(2);
    size_t room = CONFIG_KERNEL_VM_SIZE > mapped ? CONFIG_KERNEL_VM_SIZE - mapped : 0;
    if (ram_end > low + PAGE) {
        heap_size = MIN(ram_end - low, room) & ~(size_t)(PAGE - 1);
        k_heap_init(&heap, map(low, heap_size, K_MEM_PERM_RW), heap_size);
    }
}

/* Zephyr's NS16550 driver sets an 8-byte RX FIFO trigger. QEMU hands the guest one trigger's worth
 * of bytes per interrupt, so the 14-byte trigger the bare-metal board uses takes 1.75x fewer
 * interrupts for the same weights. FCR shares its port with IIR; bit 0 keeps the FIFOs on, and
 * neither FIFO is cleared. */
#define UART_FCR (DT_REG_ADDR(DT_CHOSEN(zephyr_console)) + 2)
#define FCR_FIFO_ON 0x01
#define FCR_RX_TRIGGER_14 0xC0

int main(void) {
    board_init();
    sys_out8(FCR_FIFO_ON | FCR_RX_TRIGGER_14, UART_FCR);
    uart_irq_callback_user_data_set(uart, uart_isr, NULL);
    uart_irq_rx_enable(uart);
    client_main();
}
