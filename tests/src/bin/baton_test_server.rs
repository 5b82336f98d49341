//! The `baton` command line, built inside the tests package so that process tests can find it
//! (`CARGO_BIN_EXE_*` names only a package's own binaries). Same code as the real binary.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    baton_server::cli::main()
}
