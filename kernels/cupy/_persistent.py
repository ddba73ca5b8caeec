"""CUDA C helpers shared by the persistent recurrent loops (recurrent_step.py, recurrent_tiled.py).

``PERSISTENT_HELPERS`` goes into a kernel source after ``typedef ... T``: the sigmoid, loads through L2
only, and the grid-wide barrier that separates the steps of a loop run in one launch.
"""
from __future__ import annotations

PERSISTENT_HELPERS = r"""
__device__ __forceinline__ T tg_sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

// Loads that bypass L1 (cached in L2 only), for data other blocks write during the launch: the state
// and gradient rows a persistent loop hands from one step to the next.
__device__ __forceinline__ void tg_load_cg(const float* p, float (&a)[1]) { a[0] = __ldcg(p); }
__device__ __forceinline__ void tg_load_cg(const float* p, float (&a)[2]) {
    const float2 t = __ldcg(reinterpret_cast<const float2*>(p)); a[0] = t.x; a[1] = t.y; }
__device__ __forceinline__ void tg_load_cg(const float* p, float (&a)[4]) {
    const float4 t = __ldcg(reinterpret_cast<const float4*>(p)); a[0] = t.x; a[1] = t.y; a[2] = t.z; a[3] = t.w; }
__device__ __forceinline__ void tg_load_cg(const double* p, double (&a)[1]) { a[0] = __ldcg(p); }
__device__ __forceinline__ void tg_load_cg(const double* p, double (&a)[2]) {
    const double2 t = __ldcg(reinterpret_cast<const double2*>(p)); a[0] = t.x; a[1] = t.y; }

// Grid-wide barrier for a persistent loop (every block resident: the host launches at most one block
// per SM). Arrivals count up across the launch; barrier k of the launch waits for k * gridDim.x.
__device__ __forceinline__ void tg_grid_sync(unsigned int* count, unsigned int target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();  // this block's writes of the step, before its arrival
        atomicAdd(count, 1u);
        while (*reinterpret_cast<volatile unsigned int*>(count) < target) { }
        __threadfence();
    }
    __syncthreads();
}

// After the last step: the last block to leave resets the counter for the next launch (every block
// has passed every barrier by then, so nobody waits on it any more).
__device__ __forceinline__ void tg_grid_leave(unsigned int* count, unsigned int total) {
    if (threadIdx.x == 0 && atomicAdd(count, 1u) == total - 1) atomicExch(count, 0u);
}
"""
