/*
 * Multiboot (v1) entry: load our own GDT, enable SSE, switch to our stack, call kmain(magic, info).
 * Interrupt stubs save the full SSE state (fxsave), because an IRQ can arrive in the middle of the
 * trainer's SSE arithmetic and the C handlers are free to use XMM registers.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* bit 0: page-align modules; bit 1: memory map */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .bss
    .align 16
stack_bottom:
    .skip 65536
stack_top:

    .section .data
    .align 8
gdt:
    .quad 0x0000000000000000
    .quad 0x00CF9A000000FFFF /* 0x08: code, flat 4 GiB */
    .quad 0x00CF92000000FFFF /* 0x10: data, flat 4 GiB */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .section .text
    .global _start
    .type _start, @function
_start:
    cli
    cld
    mov $stack_top, %esp
    mov %eax, %esi          /* multiboot magic */
    mov %ebx, %edi          /* multiboot info */
    lgdt gdt_ptr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss

    /* SSE needs CPUID.1:EDX bits 25 (SSE) and 26 (SSE2); without them report and stop. */
    mov $1, %eax
    cpuid
    and $0x06000000, %edx
    cmp $0x06000000, %edx
    jne no_sse
    mov %cr0, %eax
    and $~(1 << 2), %eax    /* EM off: no x87 emulation trap */
    or $(1 << 1), %eax      /* MP on: WAIT/FWAIT honour TS */
    mov %eax, %cr0
    mov %cr4, %eax
    or $(3 << 9), %eax      /* OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    fninit

    push %edi
    push %esi
    call kmain
halt:
    cli
    hlt
    jmp halt

no_sse:
    mov $0xf4, %dx          /* isa-debug-exit: QEMU exits with status (2 << 1) | 1 = 5 */
    mov $2, %al
    out %al, %dx
    jmp halt

/* ---------------------------------------------------------------- interrupt stubs */
.macro ISR_NOERR n
    .global isr\n
isr\n:
    push $0
    push $\n
    jmp isr_common
.endm
.macro ISR_ERR n
    .global isr\n
isr\n:
    push $\n
    jmp isr_common
.endm

ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR   8
ISR_NOERR 9
ISR_ERR   10
ISR_ERR   11
ISR_ERR   12
ISR_ERR   13
ISR_ERR   14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR   17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR   21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_NOERR 29
ISR_ERR   30
ISR_NOERR 31
/* IRQ 0-15 after the PIC remap */
ISR_NOERR 32
ISR_NOERR 33
ISR_NOERR 34
ISR_NOERR 35
ISR_NOERR 36
ISR_NOERR 37
ISR_NOERR 38
ISR_NOERR 39
ISR_NOERR 40
ISR_NOERR 41
ISR_NOERR 42
ISR_NOERR 43
ISR_NOERR 44
ISR_NOERR 45
ISR_NOERR 46
ISR_NOERR 47

isr_common:
    pusha
    cld
    mov %esp, %ebp          /* -> struct isr_frame */
    sub $512, %esp
    and $-16, %esp
    fxsave (%esp)
    push %ebp
    call isr_dispatch
    add $4, %esp
    fxrstor (%esp)
    mov %ebp, %esp
    popa
    add $8, %esp            /* vector, error code */
    iret

    .section .rodata
    .align 4
    .global isr_table
isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long isr\n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .long isr\n
    .endr

    .section .note.GNU-stack, "", @progbits
