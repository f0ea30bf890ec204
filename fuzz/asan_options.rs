/// AddressSanitizer's defaults, when it is on (cargo-fuzz's default; an
/// `ASAN_OPTIONS` in the environment still wins). Every target's own code
/// is safe Rust: a stack frame cannot be used after it returns and no byte
/// is read before it is written, so the fake stacks and the filling of
/// every allocation that look for those only cost time (most of an
/// input's, with the many small allocations of a run); nor are allocation
/// stack traces worth recording on every allocation. Out-of-bounds and
/// use-after-free checks stay, the latter over the last 16 MB freed rather
/// than 256 MB (which, recycled, faulted fresh pages in on every input).
/// Included by every target (`include!`).
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_stack_use_after_return=0:max_malloc_fill_size=0:malloc_context_size=0:quarantine_size_mb=16"
        .as_ptr()
}
