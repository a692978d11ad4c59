/*
 * The clock and the FP32 FMA throughput of one core, measured (bench_scoring.py builds and runs it).
 *
 *   gcc -O2 -o peak peak.c && ./peak 512     (or 256: ymm instead of zmm registers)
 *
 * Prints "clock_ghz <G>" and "fma_gflops <F>": the best of 200 runs of 2 ms each, after 0.3 s
 * of warming up. Another process can only slow a run down, and on a busy machine the
 * scheduler shares a core in slices of a few milliseconds: short runs find whole slices. The clock is not read from the kernel: under a
 * hypervisor /proc/cpuinfo may report the base clock of the host, not the one the core runs at.
 *
 * Clock: a chain of dependent integer additions. Each waits for the previous one's result, and
 * an addition takes one cycle on every x86 core, so additions per second is cycles per second;
 * the loop's own counter and branch run beside the chain on other ports.
 *
 * FMA throughput: twelve independent vfmadd231ps accumulators, enough to keep two FMA pipes of
 * four-cycle latency busy (8 in flight) with a margin. FLOP = 12 x lanes x 2 per iteration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Dependent additions per second over `iterations` x 32 additions. */
static double additions_per_second(long iterations) {
    long x = 0;
    double start = now();
    for (long i = 0; i < iterations; i++)
        __asm__ volatile(".rept 32\n\taddq $1, %0\n\t.endr" : "+r"(x));
    double elapsed = now() - start;
    return x == 32 * iterations ? 32.0 * (double)iterations / elapsed : -1.0;
}

#define FMA(width, r) "vfmadd231ps %%" width "14, %%" width "15, %%" width #r "\n\t"
#define TWELVE(width)                                                                                         \
    FMA(width, 0) FMA(width, 1) FMA(width, 2) FMA(width, 3) FMA(width, 4) FMA(width, 5) FMA(width, 6)            \
        FMA(width, 7) FMA(width, 8) FMA(width, 9) FMA(width, 10) FMA(width, 11)
#define CLOBBERED "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"

/* FP32 FLOP per second of `iterations` x 12 independent FMAs on `width`-bit registers. */
static double fma_flops(long iterations, int width) {
    __asm__ volatile("vxorps %%xmm14, %%xmm14, %%xmm14\n\tvxorps %%xmm15, %%xmm15, %%xmm15" ::: "xmm14", "xmm15");
    double start = now();
    if (width == 512) {
        for (long i = 0; i < iterations; i++)
            __asm__ volatile(TWELVE("zmm")::: CLOBBERED);
    } else {
        for (long i = 0; i < iterations; i++)
            __asm__ volatile(TWELVE("ymm")::: CLOBBERED);
    }
    double elapsed = now() - start;
    __asm__ volatile("vzeroupper");
    return 12.0 * (width / 32) * 2.0 * (double)iterations / elapsed;
}

/* Iterations of `rate` that last about `seconds`, found by doubling from a short run. */
static long iterations_for(double (*rate)(long, int), int width, double seconds) {
    long n = 1 << 16;
    for (;;) {
        double start = now();
        rate(n, width);
        double elapsed = now() - start;
        if (elapsed > 0.02) return (long)((double)n * seconds / elapsed) + 1;
        n *= 2;
    }
}

static double clock_rate(long n, int width) {
    (void)width;
    return additions_per_second(n);
}

static double best(double (*rate)(long, int), long n, int width, int runs) {
    double top = 0.0;
    for (int i = 0; i < runs; i++) {
        double value = rate(n, width);
        if (value > top) top = value;
    }
    return top;
}

int main(int argc, char **argv) {
    int width = argc > 1 ? atoi(argv[1]) : 256;
    if (width != 256 && width != 512) {
        fprintf(stderr, "usage: %s 256|512\n", argv[0]);
        return 2;
    }
    long n_clock = iterations_for(clock_rate, width, 0.002);
    long n_fma = iterations_for(fma_flops, width, 0.002);
    /* Busy for a moment first: a core that was idle may still be at a low clock. */
    fma_flops(150 * n_fma, width);
    printf("clock_ghz %.4f\n", best(clock_rate, n_clock, width, 200) / 1e9);
    printf("fma_gflops %.2f\n", best(fma_flops, n_fma, width, 200) / 1e9);
    return 0;
}
