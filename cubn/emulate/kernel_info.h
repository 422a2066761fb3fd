/*
 * kernel_info.h -- what the emulator's Python side learns about each compiled kernel.
 *
 * The build step (cubn/emulate/build.py) appends one line per kernel to the kernel file:
 *     CUBN_EMU_KERNEL(batchnorm_stats_v1, 1024, const T* x, ACC* mean, ...)
 * which exports cubn_emu_info_batchnorm_stats_v1(): the kernel's name, its __launch_bounds__,
 * its parameter list as the compiler sees it (macros expanded, so "const half_t* x"), the kind
 * and width of every parameter (read off the function's type, not parsed), and a function that
 * calls the kernel with an array of pointers to the argument values, as cuLaunchKernel does.
 */
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace cubn_emu {

enum Kind { STRUCT, F16, F32, F64, I8, U8, I16, U16, I32, U32, I64, U64, BOOL };

// float16 is common.cuh's half_t: a 2-byte struct holding `bits`
template <class X, class = void> struct IsHalf : std::false_type {};
template <class X>
struct IsHalf<X, std::void_t<decltype(std::declval<X>().bits)>> : std::integral_constant<bool, sizeof(X) == 2> {};

template <class X>
constexpr int kind_of() {
    if constexpr (std::is_same_v<X, bool>) return BOOL;
    else if constexpr (std::is_same_v<X, float>) return F32;
    else if constexpr (std::is_same_v<X, double>) return F64;
    else if constexpr (std::is_integral_v<X>) {
        constexpr int base = sizeof(X) == 1 ? I8 : sizeof(X) == 2 ? I16 : sizeof(X) == 4 ? I32 : I64;
        return std::is_signed_v<X> ? base : base + 1;
    } else if constexpr (IsHalf<X>::value) return F16;
    else return STRUCT;
}

struct Param {
    int pointer;       // 1: a pointer parameter; kind/size/align then describe what it points to
    int is_const;      // pointer to const
    int kind;          // Kind
    int size;          // bytes of the value (scalar) or of one element (pointer)
    int align;
};

template <class A>
constexpr Param param_of() {
    if constexpr (std::is_pointer_v<A>) {
        using E = std::remove_pointer_t<A>;
        using V = std::remove_cv_t<E>;
        return {1, std::is_const_v<E>, kind_of<V>(), int(sizeof(V)), int(alignof(V))};
    } else {
        return {0, 0, kind_of<A>(), int(sizeof(A)), int(alignof(A))};
    }
}

constexpr int MAX_PARAMS = 40;

struct KernelInfo {
    const char* name;
    int max_threads;                 // __launch_bounds__, or 1024 without one
    const char* params;              // the parameter list as compiled
    int nparams;
    Param param[MAX_PARAMS];
    void (*invoke)(void** args);     // args[i] points to the value of parameter i
};

template <class... A, std::size_t... I>
void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<A*>(args[I])...);
}
template <class... A>
constexpr std::size_t arity(void (*)(A...)) { return sizeof...(A); }
template <auto F>
void invoke(void** args) { call(F, args, std::make_index_sequence<arity(F)>{}); }

template <class... A>
KernelInfo make_info(void (*)(A...), const char* name, int max_threads, const char* params, void (*fn)(void**)) {
    static_assert(sizeof...(A) <= MAX_PARAMS, "too many kernel parameters for the emulator");
    KernelInfo k{name, max_threads, params, int(sizeof...(A)), {}, fn};
    const Param list[] = {param_of<A>()..., Param{}};
    for (std::size_t i = 0; i < sizeof...(A); i++) k.param[i] = list[i];
    return k;
}

}  // namespace cubn_emu

#define CUBN_EMU_STR(...) #__VA_ARGS__
#define CUBN_EMU_XSTR(...) CUBN_EMU_STR(__VA_ARGS__)
#define CUBN_EMU_KERNEL(name, max_threads, ...)                                                          \
    extern "C" const cubn_emu::KernelInfo* cubn_emu_info_##name() {                                      \
        static const cubn_emu::KernelInfo info = cubn_emu::make_info(                                    \
            &name, #name, max_threads, CUBN_EMU_XSTR(__VA_ARGS__), &cubn_emu::invoke<&name>);            \
        return &info;                                                                                    \
    }
