/*
 * runtime.cpp -- runs a compiled kernel's grid on the CPU with GPU semantics checked.
 *
 * One launch (cubn_emu_launch) runs the whole grid once per thread schedule:
 *   - each argument array is copied into its own mapping between two inaccessible guard regions,
 *     its last byte against the upper guard on even schedules and its first byte against the
 *     lower guard on odd ones, so a read or write one element past either end faults; const
 *     arguments are mapped read-only. A fault is reported with the argument and the index.
 *   - blocks run one after another (forward, reverse, or a seeded random order); inside a block
 *     every thread is a fiber on its own stack, run in the schedule's order until it
 *     waits at a barrier or a warp collective, or returns.
 *   - when no thread can run, the scheduler completes the warp collectives whose lanes have all
 *     arrived, else releases the barrier if every thread waits there; anything else is a deadlock
 *     on a GPU and is reported with the kernel, the block, the thread and the line.
 *   - the outputs of every schedule must be bitwise equal to the first one's.
 * Errors end the launch: the message goes back to Python, which raises EmulatorError.
 */
#include "cuda_host.h"
#include "kernel_info.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

extern "C" char __start_cubn_shared[] __attribute__((weak));   // the __shared__ variables (linker-made)
extern "C" char __stop_cubn_shared[] __attribute__((weak));

namespace cubn_emu {

const uint3* thread_idx;
uint3 block_idx, block_dim, grid_dim;

namespace {

enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum Schedule { FORWARD = 0, REVERSE = 1 };   // other values: a random order seeded with value - 2

// ----------------------------------------------------------------------------- fiber switch
// switch_stack(&from, to): saves the callee-saved registers on the current stack, stores its stack
// pointer in *from, and continues on stack `to` where another switch_stack left it. On x86-64 that is
// a dozen instructions (ucontext's swapcontext makes a system call per switch, ~20x slower); other
// architectures use ucontext.
#if defined(__x86_64__)
extern "C" void cubn_emu_switch_stack(void** from, void* to);
asm(R"(
.text
.hidden cubn_emu_switch_stack
.globl cubn_emu_switch_stack
.type cubn_emu_switch_stack, @function
cubn_emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");
struct Context { void* sp; };
void switch_to(Context& from, Context& to) { cubn_emu_switch_stack(&from.sp, to.sp); }
// a new fiber's stack: six zero registers, then `entry` as the return address, 16-byte aligned as after a call
void prepare(Context& c, char* stack, size_t size, void (*entry)()) {
    void** sp = (void**)(((uintptr_t)(stack + size) & ~uintptr_t(15)) - 64);
    for (int i = 0; i < 6; i++) sp[i] = nullptr;
    sp[6] = (void*)entry;
    c.sp = sp;
}
#else
struct Context { ucontext_t uc; };
void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void prepare(Context& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct Thread {
    uint3 idx;
    State state;
    Context ctx;
    const char* file;          // where it waits
    int line;
    WarpOp op;                 // the warp collective it waits at
    unsigned mask;
    uint64_t value, result;
    int arg, width;
};

struct Buffer {                // one pointer argument of the launch
    const char* name;
    char* host;                // the caller's array
    size_t nbytes, elem;
    int kind;
    bool is_const;
    char* map = nullptr;       // guard + body + guard
    size_t map_len = 0;
    char* data = nullptr;      // what the kernel sees
};

const size_t GUARD = 1 << 16;
const size_t STACK = 1 << 17;
const int MAX_THREADS = 1024;

const KernelInfo* kernel;
void** values;                             // the kernel's argument values of this schedule
std::vector<Buffer> buffers;
Thread threads[MAX_THREADS];
char* stacks[MAX_THREADS];                 // each STACK bytes above one inaccessible page
int nthreads;
Thread* running;
Context scheduler;
sigjmp_buf abort_env;
char message[4096];
struct sigaction saved_segv, saved_bus, saved_alrm;
stack_t saved_alt;
char* alt_stack;

const char* schedule_name(long s, char* out, size_t n) {
    if (s == FORWARD) return "forward";
    if (s == REVERSE) return "reverse";
    snprintf(out, n, "random:%ld", s - 2);
    return out;
}

const char* short_file(const char* f) {
    const char* k = strstr(f, "kernels/");
    const char* last = k;
    while (k) { last = k; k = strstr(k + 1, "kernels/"); }
    return last ? last : f;
}

int where(char* out, size_t n) {
    return snprintf(out, n, "%s, block (%u, %u, %u): ", kernel->name, block_idx.x, block_idx.y, block_idx.z);
}

[[noreturn]] void fail(const char* fmt, ...) {
    int k = where(message, sizeof message);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message + k, sizeof message - k, fmt, ap);
    va_end(ap);
    siglongjmp(abort_env, 1);
}

void describe_thread(const Thread& t, char* out, size_t n) {
    const char* what = t.state == DONE ? "has returned" : t.state == AT_BARRIER ? "waits at the barrier at"
                     : t.state == AT_WARP ? "waits at a warp collective at" : "is running";
    int k = snprintf(out, n, "thread (%u, %u, %u) %s", t.idx.x, t.idx.y, t.idx.z, what);
    if (t.state == AT_BARRIER || t.state == AT_WARP) snprintf(out + k, n - k, " %s:%d", short_file(t.file), t.line);
}

// ----------------------------------------------------------------------------- fibers

void wait_here(State s, const char* file, int line) {
    Thread* t = running;
    t->state = s;
    t->file = file;
    t->line = line;
    switch_to(t->ctx, scheduler);
}

void thread_main() {
    kernel->invoke(values);
    running->state = DONE;
    switch_to(running->ctx, scheduler);   // never resumed
}

void start_threads() {
    for (int i = 0; i < nthreads; i++) {
        Thread& t = threads[i];
        t.idx = {unsigned(i) % block_dim.x, unsigned(i) / block_dim.x % block_dim.y,
                 unsigned(i) / (block_dim.x * block_dim.y)};
        t.state = READY;
        if (!stacks[i]) {
            char* m = (char*)mmap(nullptr, STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) fail("cannot map a thread stack");
            mprotect(m, 4096, PROT_NONE);    // stack overflow faults instead of corrupting a neighbour
            stacks[i] = m + 4096;
        }
        prepare(t.ctx, stacks[i], STACK, thread_main);
    }
}

void run(Thread& t) {
    running = &t;
    thread_idx = &t.idx;
    switch_to(scheduler, t.ctx);
    running = nullptr;
}

// ----------------------------------------------------------------------------- warp collectives

const char* op_name(WarpOp op) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
    return names[op];
}

// Lane l's source lane for a shuffle, or -1 when it keeps its own value (outside its width segment).
int source_lane(const Thread& t, int l) {
    const int base = l & ~(t.width - 1), end = base + t.width;
    int src = l;
    switch (t.op) {
        case SHFL_IDX: src = base + (t.arg & (t.width - 1)); break;
        case SHFL_UP: src = l - t.arg; break;
        case SHFL_DOWN: src = l + t.arg; break;
        case SHFL_XOR: src = l ^ t.arg; break;
        default: return -1;
    }
    return src < base || src >= end ? -1 : src;
}

// Completes the collective thread t waits at if every lane of its mask waits at the same one.
// Returns false when some lane has not arrived yet; reports what can never complete.
bool try_complete(Thread& t, int i) {
    const int warp = i / 32, lane = i % 32, lanes = std::min(32, nthreads - warp * 32);
    char who[256];
#define WHO (describe_thread(t, who, sizeof who), who)
    if (!(t.mask >> lane & 1u)) fail("%s with mask 0x%08x, which leaves out its own lane %d", WHO, t.mask, lane);
    if (t.width < 1 || t.width > 32 || (t.width & (t.width - 1)))
        fail("%s with width %d (not a power of two <= 32)", WHO, t.width);
    for (int j = 0; j < 32; j++) {
        if (!(t.mask >> j & 1u)) continue;
        if (j >= lanes) fail("%s (%s) with mask 0x%08x, but lane %d does not exist: warp %d has %d lanes",
                             WHO, op_name(t.op), t.mask, j, warp, lanes);
        const Thread& u = threads[warp * 32 + j];
        if (u.state == DONE) fail("%s (%s): lane %d in its mask 0x%08x has returned and can never join",
                                  WHO, op_name(t.op), j, t.mask);
        if (u.state != AT_WARP) return false;
        if (u.line != t.line || strcmp(u.file, t.file) || u.op != t.op || u.mask != t.mask || u.width != t.width) {
            char other[256];
            describe_thread(u, other, sizeof other);
            fail("%s (%s, mask 0x%08x) while lane %d of its mask, %s (%s, mask 0x%08x): not the same collective",
                 WHO, op_name(t.op), t.mask, j, other, op_name(u.op), u.mask);
        }
    }
#undef WHO
    uint64_t ballot = 0;
    for (int j = 0; j < 32; j++)
        if (t.mask >> j & 1u) ballot |= uint64_t(threads[warp * 32 + j].value != 0) << j;
    for (int j = 0; j < 32; j++) {
        if (!(t.mask >> j & 1u)) continue;
        Thread& u = threads[warp * 32 + j];
        switch (u.op) {
            case BALLOT: u.result = ballot; break;
            case ANY: u.result = ballot != 0; break;
            case ALL: u.result = ballot == (uint64_t)t.mask; break;
            case SYNCWARP: u.result = 0; break;
            default: {
                const int src = source_lane(u, j);
                if (src >= 0 && !(t.mask >> src & 1u)) {
                    char reader[256];
                    describe_thread(u, reader, sizeof reader);
                    fail("%s (%s) reads lane %d, which is not in the mask 0x%08x: undefined on a GPU",
                         reader, op_name(u.op), src, t.mask);
                }
                u.result = src < 0 ? u.value : threads[warp * 32 + src].value;
            }
        }
    }
    for (int j = 0; j < 32; j++)
        if (t.mask >> j & 1u) threads[warp * 32 + j].state = READY;
    return true;
}

// ----------------------------------------------------------------------------- one block

void order_of(int n, long schedule, uint64_t& rng, std::vector<int>& order) {
    order.resize(n);
    for (int i = 0; i < n; i++) order[i] = schedule == REVERSE ? n - 1 - i : i;
    if (schedule == FORWARD || schedule == REVERSE) return;
    for (int i = n - 1; i > 0; i--) {          // Fisher-Yates with xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::swap(order[i], order[rng % uint64_t(i + 1)]);
    }
}

// Every thread waits at a barrier or has returned, and no collective can complete.
void at_a_standstill() {
    int first = -1, arrived = 0, done = 0;
    for (int i = 0; i < nthreads; i++) {
        const Thread& t = threads[i];
        if (t.state == DONE) { done++; continue; }
        if (t.state == AT_WARP) {
            char who[256];
            describe_thread(t, who, sizeof who);
            fail("%s (%s), but a lane of its mask 0x%08x never arrives (deadlock)", who, op_name(t.op), t.mask);
        }
        if (first < 0) first = i;
        const Thread& f = threads[first];
        if (t.line != f.line || strcmp(t.file, f.file))
            fail("threads wait at different barriers: thread (%u, %u, %u) at %s:%d, thread (%u, %u, %u) at %s:%d",
                 f.idx.x, f.idx.y, f.idx.z, short_file(f.file), f.line, t.idx.x, t.idx.y, t.idx.z,
                 short_file(t.file), t.line);
        arrived++;
    }
    if (done == 0) {
        for (int i = 0; i < nthreads; i++) threads[i].state = READY;   // the barrier completes
        return;
    }
    int gone = 0;
    while (threads[gone].state != DONE) gone++;
    const Thread& f = threads[first];
    const Thread& g = threads[gone];
    fail("the barrier at %s:%d is reached by %d of %d threads: thread (%u, %u, %u) and %d others have returned "
         "(a __syncthreads() that not every thread of the block reaches hangs or corrupts a GPU)",
         short_file(f.file), f.line, arrived, nthreads, g.idx.x, g.idx.y, g.idx.z, done - 1);
}

void run_block(long schedule, uint64_t& rng) {
    if (__start_cubn_shared) memset(__start_cubn_shared, 0xFF, __stop_cubn_shared - __start_cubn_shared);
    start_threads();
    std::vector<int> order;
    for (;;) {
        order_of(nthreads, schedule, rng, order);
        for (int i : order)
            if (threads[i].state == READY) run(threads[i]);
        bool all_done = true, completed = false;
        for (int w = 0; w * 32 < nthreads; w++) {
            unsigned tried = 0;                     // lanes whose collective was tried in this pass
            for (int i = w * 32; i < std::min(nthreads, w * 32 + 32); i++) {
                all_done &= threads[i].state == DONE;
                if (threads[i].state != AT_WARP || (tried >> (i % 32) & 1u)) continue;
                completed |= try_complete(threads[i], i);
                tried |= threads[i].mask | 1u << (i % 32);
            }
        }
        if (all_done) return;
        if (!completed) at_a_standstill();
    }
}

// ----------------------------------------------------------------------------- argument memory

void place(Buffer& b, bool at_end) {
    b.data = nullptr;
    if (b.nbytes == 0) return;                 // an empty array is a null pointer, as on CuPy
    const size_t page = sysconf(_SC_PAGESIZE);
    const size_t body = (b.nbytes + page - 1) / page * page;
    b.map_len = GUARD + body + GUARD;
    b.map = (char*)mmap(nullptr, b.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (b.map == MAP_FAILED) { b.map = nullptr; fail("cannot map %zu bytes for argument %s", b.nbytes, b.name); }
    mprotect(b.map + GUARD, body, PROT_READ | PROT_WRITE);
    b.data = b.map + GUARD + (at_end ? body - b.nbytes : 0);   // nbytes is a multiple of the element size
    memcpy(b.data, b.host, b.nbytes);
    if (b.is_const) mprotect(b.map + GUARD, body, PROT_READ);
}

void release_all() {
    for (Buffer& b : buffers) {
        if (b.map) munmap(b.map, b.map_len);
        b.map = nullptr;
    }
}

void print_element(char* out, size_t n, const Buffer& b, const char* p) {
    switch (b.kind) {
        case F32: { float v; memcpy(&v, p, 4); snprintf(out, n, "%.9g", v); return; }
        case F64: { double v; memcpy(&v, p, 8); snprintf(out, n, "%.17g", v); return; }
        case F16: { unsigned short v; memcpy(&v, p, 2); snprintf(out, n, "%.5g", half_to_float(v)); return; }
        default: {
            int k = snprintf(out, n, "0x");
            for (size_t i = 0; i < b.elem && k < (int)n - 3; i++) k += snprintf(out + k, n - k, "%02x", (unsigned char)p[i]);
        }
    }
}

// ----------------------------------------------------------------------------- signals

void on_fault(int sig, siginfo_t* info, void* uctx) {
    char* a = (char*)info->si_addr;
    const char* access = "touches";
#if defined(__x86_64__)
    access = (((ucontext_t*)uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? "writes" : "reads";
#else
    (void)uctx;
#endif
    char who[128] = "the emulator itself";
    if (running) snprintf(who, sizeof who, "thread (%u, %u, %u)", running->idx.x, running->idx.y, running->idx.z);
    for (const Buffer& b : buffers) {
        if (!b.map || a < b.map || a >= b.map + b.map_len) continue;
        const long long off = a - b.data, size = (long long)b.elem;
        const long long index = off >= 0 ? off / size : -((-off + size - 1) / size);
        const long long count = (long long)(b.nbytes / b.elem);
        if (index >= 0 && index < count)
            fail("%s %s %s[%lld], but %s is a const argument (read-only)", who, access, b.name, index, b.name);
        fail("%s %s %s[%lld], outside its %lld elements (valid indices 0..%lld)",
             who, access, b.name, index, count, count - 1);
    }
    for (int i = 0; i < MAX_THREADS; i++)
        if (stacks[i] && a >= stacks[i] - 4096 && a < stacks[i])
            fail("%s overflows its %zu-byte stack", who, STACK);
    if ((uintptr_t)a < (1u << 16))
        fail("%s %s address %p: a null pointer (an argument passed as an empty array?)", who, access, (void*)a);
    fail("%s %s address %p, outside every argument (signal %d)", who, access, (void*)a, sig);
}

double timeout_seconds;

void on_alarm(int, siginfo_t*, void*) {
    char who[128] = "";
    if (running) snprintf(who, sizeof who, " (thread (%u, %u, %u) was running)", running->idx.x, running->idx.y, running->idx.z);
    fail("did not finish within %g s%s: an endless loop, or a thread spinning on memory that another "
         "thread should write? (CUBN_EMULATE_TIMEOUT sets the limit)", timeout_seconds, who);
}

void set_timer(double seconds) {
    itimerval t = {};
    t.it_value.tv_sec = (time_t)seconds;
    t.it_value.tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6);
    setitimer(ITIMER_REAL, &t, nullptr);
}

void install_handlers() {
    if (!alt_stack) {
        alt_stack = (char*)mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    stack_t ss = {};
    ss.ss_sp = alt_stack;
    ss.ss_size = 1 << 16;
    sigaltstack(&ss, &saved_alt);
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &saved_segv);
    sigaction(SIGBUS, &sa, &saved_bus);
    sa.sa_sigaction = on_alarm;
    sigaction(SIGALRM, &sa, &saved_alrm);
}

void restore_handlers() {
    set_timer(0);
    sigaction(SIGSEGV, &saved_segv, nullptr);
    sigaction(SIGBUS, &saved_bus, nullptr);
    sigaction(SIGALRM, &saved_alrm, nullptr);
    sigaltstack(&saved_alt, nullptr);
}

}  // namespace

// ----------------------------------------------------------------------------- float16

float half_to_float(unsigned short h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    float f;
    if (e == 0) {
        f = ldexpf(float(m), -24);                          // zero and subnormals: exact
        return sign ? -f : f;
    }
    const uint32_t bits = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13));
    memcpy(&f, &bits, 4);
    return f;
}

unsigned short float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7fffu;             // NaN: the canonical NaN that cvt gives
    if (a >= 0x477ff000u) return sign | 0x7c00u;            // >= 65520 rounds to infinity
    if (a < 0x38800000u)                                    // below 2^-14: a subnormal half, m * 2^-24
        return sign | (unsigned short)nearbyintf(ldexpf(fabsf(f), 24));   // exact scaling, round to even
    uint32_t h = ((a >> 23) - 112) << 10 | ((a >> 13) & 0x3ffu);
    const uint32_t rest = a & 0x1fffu;                      // the 13 bits that do not fit: round to even
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}

void syncthreads(const char* file, int line) { wait_here(AT_BARRIER, file, line); }

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
    Thread* t = running;
    t->op = op;
    t->mask = mask;
    t->value = value;
    t->arg = arg;
    t->width = width;
    wait_here(AT_WARP, file, line);
    return t->result;
}

}  // namespace cubn_emu

using namespace cubn_emu;

// One argument as Python hands it over: a pointer parameter's array (data and bytes; none for an
// empty array), or the address of a scalar's bytes.
struct Arg {
    void* host;
    uint64_t nbytes;
    const char* name;
};

extern "C" size_t cubn_emu_static_shared_bytes() { return __stop_cubn_shared - __start_cubn_shared; }

// Runs kernel k on grid x block once per schedule; 0 on success, else 1 with the reason in err.
extern "C" int cubn_emu_launch(const KernelInfo* k, const unsigned* grid, const unsigned* block, const Arg* args,
                               const long* schedules, int nschedules, double timeout, char* err, int errlen) {
    kernel = k;
    running = nullptr;
    timeout_seconds = timeout;
    block_idx = {0, 0, 0};
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    nthreads = int(block[0] * block[1] * block[2]);
    buffers.clear();
    std::vector<void*> slots(k->nparams);        // the values: a pointer's guarded copy, or the scalar bytes
    std::vector<void*> pointers(k->nparams);
    for (int i = 0; i < k->nparams; i++) {
        const Param& p = k->param[i];
        if (!p.pointer) { slots[i] = args[i].host; continue; }
        Buffer b;
        b.name = args[i].name;
        b.host = (char*)args[i].host;
        b.nbytes = args[i].nbytes;
        b.elem = p.size;
        b.kind = p.kind;
        b.is_const = p.is_const;
        buffers.push_back(b);
        slots[i] = &pointers[i];
    }
    std::vector<std::vector<char>> first(buffers.size());
    install_handlers();
    if (sigsetjmp(abort_env, 1)) {
        restore_handlers();
        release_all();
        fflush(stdout);
        snprintf(err, errlen, "%s", message);
        return 1;
    }
    values = slots.data();
    for (int s = 0; s < nschedules; s++) {
        for (Buffer& b : buffers) place(b, s % 2 == 0);
        for (int i = 0, j = 0; i < k->nparams; i++)
            if (k->param[i].pointer) pointers[i] = buffers[j++].data;
        if (timeout > 0) set_timer(timeout);
        const size_t nblocks = size_t(grid[0]) * grid[1] * grid[2];
        uint64_t rng = uint64_t(schedules[s]) * 0x9E3779B97F4A7C15ull + 1;
        std::vector<size_t> blocks(nblocks);
        for (size_t b = 0; b < nblocks; b++) blocks[b] = schedules[s] == REVERSE ? nblocks - 1 - b : b;
        if (schedules[s] != FORWARD && schedules[s] != REVERSE)
            for (size_t b = nblocks - 1; b > 0 && nblocks > 1; b--) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                std::swap(blocks[b], blocks[rng % (b + 1)]);
            }
        for (size_t b : blocks) {
            block_idx = {unsigned(b % grid[0]), unsigned(b / grid[0] % grid[1]), unsigned(b / (size_t(grid[0]) * grid[1]))};
            run_block(schedules[s], rng);
        }
        set_timer(0);
        for (size_t j = 0; j < buffers.size(); j++) {
            const Buffer& b = buffers[j];
            if (b.is_const || !b.data) continue;
            if (s == 0) { first[j].assign(b.data, b.data + b.nbytes); continue; }
            for (size_t e = 0; e < b.nbytes; e += b.elem) {
                if (!memcmp(first[j].data() + e, b.data + e, b.elem)) continue;
                char want[64], got[64], s0[32], s1[32];
                print_element(want, sizeof want, b, first[j].data() + e);
                print_element(got, sizeof got, b, b.data + e);
                snprintf(message, sizeof message, "%s: %s[%zu] is %s under the %s thread schedule but %s under the "
                         "%s one: a missing __syncthreads, a race, or a read of memory no thread wrote", k->name,
                         b.name, e / b.elem, want, schedule_name(schedules[0], s0, sizeof s0), got,
                         schedule_name(schedules[s], s1, sizeof s1));
                siglongjmp(abort_env, 1);
            }
        }
        release_all();
    }
    restore_handlers();
    for (size_t j = 0; j < buffers.size(); j++)
        if (!buffers[j].is_const && buffers[j].nbytes) memcpy(buffers[j].host, first[j].data(), buffers[j].nbytes);
    fflush(stdout);                               // the kernels' printf output, before Python prints more
    return 0;
}
