/* kooka: 16-bit float types for mlx-c on targets without ARM half types.
 *
 * mlx-c's `half.h` declares `float16_t` / `bfloat16_t` (and the functions that use them)
 * only on aarch64, but mlx-rs calls those functions on every target. MLX itself only
 * reinterprets the bits, so a 16-bit storage type is enough. This header is force-included
 * (`-include`) before mlx-c's own headers and claims `half.h`'s include guard.
 *
 * On the Rust side `float16_t` becomes `__BindgenFloat16(pub u16)`, the newtype mlx-rs
 * expects (see build.rs); it travels in an integer register like `uint16_t`. */
#ifndef KOOKA_MLX_HALF_H
#define KOOKA_MLX_HALF_H

#if !defined(__aarch64__) && !defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#define MLX_HALF_H
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef uint16_t float16_t;
typedef uint16_t bfloat16_t;
#endif

#endif
