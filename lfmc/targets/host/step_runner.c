/* lfmc's step runner: one native call runs a whole preplanned step (every kernel launch of a decode or prefill
 * call, in order, over buffers bound at load), instead of one Python call per kernel.
 *
 * Each kernel is a TVM-FFI "safe call" symbol (__tvm_ffi_<name>) of a kernel library that TVM's runtime has
 * already loaded (so the library's backend hooks, e.g. its parallel launch, are bound). The caller lays out
 * every launch's arguments once, as TVM-FFI Any values (tensors by object handle, integers by value), and
 * passes the table on each call. Built with the artifact by the target's C compiler; no TVM headers needed:
 * the two types below are TVM-FFI's stable C ABI (tvm/ffi/c_api.h: TVMFFIAny, TVMFFISafeCallType). */
#include <stdint.h>

typedef struct {
  int32_t type_index;
  uint32_t pad;
  int64_t value;
} lfmc_any;

typedef int (*lfmc_safe_call)(void* self, const lfmc_any* args, int32_t num_args, lfmc_any* result);

/* Run launches [0, n): launch i calls fns[i] on args[offsets[i] .. offsets[i + 1]).
 * Returns 0, or 1 + the index of the first launch that failed (its error is left raised in TVM-FFI). */
int lfmc_run_step(int32_t n, const lfmc_safe_call* fns, const lfmc_any* args, const int32_t* offsets) {
  for (int32_t i = 0; i < n; ++i) {
    lfmc_any result = {0, 0, 0};
    if (fns[i](0, args + offsets[i], offsets[i + 1] - offsets[i], &result) != 0) return i + 1;
  }
  return 0;
}

/* The ABI version of this runner, checked by the runtime before it calls lfmc_run_step. */
int lfmc_step_runner_abi(void) { return 1; }
