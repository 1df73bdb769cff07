//! The causeway-edge binary.

fn main() -> std::process::ExitCode {
    causeway_dataplane::cli::main::<causeway_edge::Edge>()
}
