//! Entry point: parse the command line and hand over to the library.

/// mimalloc instead of glibc's malloc: the proxy allocates and frees a few small buffers per
/// request, and glibc's heap trimming (brk calls, chunk consolidation) cost measurably more CPU
/// per request (benches/load.sh).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shoptet_proxy::cli::commands::run(shoptet_proxy::cli::parse())
}
