//! The causeway-nlb binary.

fn main() -> std::process::ExitCode {
    causeway_dataplane::cli::main::<causeway_nlb::Nlb>()
}
