//! The causeway-alb binary.

fn main() -> std::process::ExitCode {
    causeway_dataplane::cli::main::<causeway_alb::Alb>()
}
