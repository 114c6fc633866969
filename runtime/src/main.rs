/// mimalloc rather than the system allocator: records are many small strings allocated by
/// one task thread and freed by another, where glibc's arenas contend (`sluice bench
/// --scaling`, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
