//! The `ftl` binary: dispatches to the command line in `ftl::cli`.

// Training allocates and frees the same large activation buffers every step: an allocator that
// keeps freed memory avoids a page fault per page per step (glibc returns big blocks to the OS).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ftl::cli::main()
}
