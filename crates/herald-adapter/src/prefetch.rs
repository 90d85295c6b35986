//! A hint to the CPU to start loading a value's cache line before it is
//! read. A broadcast walks thousands of connections whose state lives in as
//! many separate allocations, each a likely cache miss; asking for the next
//! ones a few steps ahead overlaps those misses with the current one's work
//! (the fan-out loop here, the gateway's flusher). It is only a hint: it
//! changes no value and cannot fault.

/// Starts loading the cache line holding `value` (a no-op where the CPU has
/// no such instruction here).
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch only
        // hints the cache: it reads nothing and cannot fault, and `value`
        // is a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
