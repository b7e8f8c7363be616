//! The `iniesta` binary.

/// mimalloc instead of the system allocator: a host allocates and frees small buffers for
/// every request and message (the SDK's requests, decoded bodies, receipts), and glibc's
/// malloc took about 15 % of the host's CPU at 10,000 messages/s (see the benchmarks page).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    iniesta::cli::main()
}
